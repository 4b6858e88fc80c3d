"""An object store in a local folder: keys are relative paths, writes are rename-atomic."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from pipeline.files import atomic_write, fsync_path, is_temp_name, temp_path_for
from pipeline.storage.base import ObjectNotFound, StorageError
from pipeline.storage.keys import validate_key, validate_prefix

_COPY_BUFFER = 1024 * 1024


class LocalStore:
    """Objects as files under `root`.

    Content types and metadata are not stored: a folder has nowhere natural to keep them, and
    the job's results file already records every output's duration and checksum.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path_for(self, key: str) -> Path:
        """The file that holds `key`."""
        return self.root.joinpath(*validate_key(key).split("/"))

    def uri_for(self, key: str) -> str:
        """The object's absolute file path."""
        return str(self.path_for(key))

    def exists(self, key: str) -> bool:
        """Whether a file is stored under `key`."""
        return self.path_for(key).is_file()

    def put_file(
        self,
        key: str,
        local_path: Path,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Copy `local_path` under `key` through a temp file and a rename."""
        target = self.path_for(key)
        uri = str(target)
        try:
            with Path(local_path).open("rb") as source:
                atomic_write(target, lambda fh: shutil.copyfileobj(source, fh, _COPY_BUFFER))
        except OSError as exc:
            if exc.filename == str(local_path):
                raise _os_error(f"cannot read {local_path} to store at", uri, exc) from exc
            raise _os_error("cannot store", uri, exc) from exc
        return uri

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Write `data` under `key` through a temp file and a rename."""
        target = self.path_for(key)
        uri = str(target)
        try:
            atomic_write(target, lambda fh: fh.write(data))
        except OSError as exc:
            raise _os_error("cannot store", uri, exc) from exc
        return uri

    def get_bytes(self, key: str) -> bytes:
        """The file's bytes."""
        target = self.path_for(key)
        try:
            return target.read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object at {target}", uri=str(target)) from exc
        except OSError as exc:
            raise _os_error("cannot read", str(target), exc) from exc

    def get_to_file(self, key: str, local_path: Path) -> Path:
        """Copy the object to `local_path` atomically."""
        target = self.path_for(key)
        try:
            with target.open("rb") as source:
                return atomic_write(
                    Path(local_path), lambda fh: shutil.copyfileobj(source, fh, _COPY_BUFFER)
                )
        except FileNotFoundError as exc:
            if not target.is_file():
                raise ObjectNotFound(f"no object at {target}", uri=str(target)) from exc
            raise _os_error("cannot copy", str(target), exc) from exc
        except OSError as exc:
            raise _os_error("cannot copy", str(target), exc) from exc

    def local_path(self, key: str) -> Path:
        """The file that holds `key` (it may not exist yet)."""
        return self.path_for(key)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys under the root that start with `prefix`, in lexical order."""
        validate_prefix(prefix)
        # Only the folder the prefix points into needs walking, not the whole root.
        folder = self.root.joinpath(*prefix.split("/")[:-1])
        keys: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(folder):
            relative = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if is_temp_name(name):
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def copy(self, source: str, target: str) -> str:
        """A hard link of `source` renamed over `target` (a copy where links are refused).

        A link shares the bytes (no second copy on disk), and the rename replaces whatever the
        target held in one step, so a reader opens the old file or the new one.
        """
        origin, destination = self.path_for(source), self.path_for(target)
        uri = str(destination)
        temp = temp_path_for(destination)
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(origin, temp)
            except FileNotFoundError as exc:
                raise ObjectNotFound(f"no object at {origin}", uri=str(origin)) from exc
            except OSError:
                # Another file system, or one without hard links: copy the bytes.
                shutil.copyfile(origin, temp)
            os.replace(temp, destination)
            # Renaming a link over another link of the same file does nothing (POSIX): the
            # target is already in place, and the temp name is left over.
            temp.unlink(missing_ok=True)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise _os_error("cannot store", uri, exc) from exc
        return uri

    def sync(self, keys: Iterable[str]) -> None:
        """Flush each folder the keys were renamed into, once."""
        for folder in sorted({self.path_for(key).parent for key in keys}):
            try:
                fsync_path(folder)
            except OSError as exc:
                raise _os_error("cannot flush", str(folder), exc) from exc

    def delete(self, key: str) -> None:
        """Remove the file under `key` if there is one, and the folders it leaves empty (a
        bucket has no folders either: a pruned release leaves nothing behind)."""
        target = self.path_for(key)
        try:
            target.unlink(missing_ok=True)
        except OSError as exc:
            raise _os_error("cannot delete", str(target), exc) from exc
        folder = target.parent
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or gone): what is above is not empty either
            folder = folder.parent

    def check(self) -> None:
        """Create the root folder if needed and make sure it can be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error("cannot create the output folder", str(self.root), exc) from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"the output folder {self.root} is not writable", uri=str(self.root))


def _os_error(action: str, uri: str, exc: OSError) -> StorageError:
    reason = exc.strerror or type(exc).__name__
    return StorageError(f"{action} {uri}: {reason}", uri=uri)
