"""Where a manifest is: a local file, or an object at `s3://bucket/prefix/jobs.yaml`.

A `ManifestSource` reads the manifest itself and names it (in errors, as given; on the job, as
recorded: the absolute path or the URI). Its `Folder` is where the files the manifest names
relative to itself are read from (text files, a CSV, lexicons, an EPUB, a cover), one file at a
time under the same rules either way (`pipeline.manifest.paths.relative_key`): never outside
the folder or prefix, never absolute, each file's size checked before it is read.

An S3 manifest is read through `pipeline.manifest.s3source`, imported only for one: boto3 is
loaded by no local manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from pipeline.errors import ManifestError
from pipeline.manifest.models import MAX_MANIFEST_BYTES
from pipeline.manifest.paths import PathProblem, file_inside

S3_SCHEME = "s3://"


class Folder(Protocol):
    """The folder or S3 prefix a manifest's relative paths start at."""

    @property
    def base(self) -> Path | str:
        """What a relative `output:` resolves under: the folder's absolute path, or
        `s3://bucket/prefix`."""
        ...

    def name_of(self, relative: str) -> str:
        """How an error names the file at `relative` (not checked)."""
        ...

    def read(self, relative: str, *, limit: int, what: str) -> bytes:
        """The bytes of `relative`, a file inside the folder of at most `limit` bytes;
        PathProblem when it can't be."""
        ...

    def open(self, relative: str, *, limit: int, what: str) -> IO[bytes]:
        """`relative` (checked as `read` checks it) as a seekable binary file to close."""
        ...


class ManifestSource(Protocol):
    """A manifest's place: its names and its folder."""

    @property
    def shown(self) -> str:
        """How errors name the manifest: the path as given, or the URI."""
        ...

    @property
    def recorded(self) -> str:
        """What a job records as its manifest: the absolute path, or the URI."""
        ...

    @property
    def folder(self) -> Folder:
        """Where the files it names are read from."""
        ...

    def read(self) -> bytes:
        """The manifest's bytes; ManifestError when there is no such file or it is too big."""
        ...


def is_s3(manifest: Path | str) -> bool:
    """Whether `manifest` names an object in S3 (a `Path` never does: it folds `//`)."""
    return isinstance(manifest, str) and manifest[: len(S3_SCHEME)].lower() == S3_SCHEME


def open_source(manifest: Path | str) -> ManifestSource:
    """The source of a manifest path or `s3://` URI."""
    if is_s3(manifest):
        from pipeline.manifest.s3source import s3_manifest

        return s3_manifest(str(manifest))
    return LocalManifest(Path(manifest))


def suffix(source: ManifestSource) -> str:
    """The manifest's suffix, which says how it is read (`.yaml`, `.csv`, ...)."""
    return PurePosixPath(source.shown).suffix


def too_big(size: int, name: str) -> ManifestError:
    """The error of a manifest over the limit."""
    return ManifestError(
        f"the manifest is {size:,} bytes; the limit is {MAX_MANIFEST_BYTES:,} "
        "(put long texts in text files)",
        file=name,
    )


@dataclass(frozen=True)
class LocalFolder:
    """A local folder; `shown` is the same folder as the user wrote it, for messages."""

    root: Path
    shown: Path

    @property
    def base(self) -> Path:
        """The folder's absolute path."""
        return self.root

    def name_of(self, relative: str) -> str:
        """The file's path as the manifest's was given."""
        return str(self.shown / relative)

    def read(self, relative: str, *, limit: int, what: str) -> bytes:
        """The file's bytes, inside the folder, symlinks included."""
        target = file_inside(relative, self.root, limit=limit, what=what)
        try:
            return target.read_bytes()
        except OSError as exc:
            raise PathProblem(f"{relative!r} cannot be read: {exc.strerror}") from exc

    def open(self, relative: str, *, limit: int, what: str) -> IO[bytes]:
        """The file, open for reading in place."""
        target = file_inside(relative, self.root, limit=limit, what=what)
        try:
            return target.open("rb")
        except OSError as exc:
            raise PathProblem(f"{relative!r} cannot be read: {exc.strerror}") from exc


@dataclass(frozen=True)
class LocalManifest:
    """A manifest file on this machine."""

    path: Path

    @property
    def shown(self) -> str:
        """The path as given."""
        return str(self.path)

    @property
    def recorded(self) -> str:
        """The absolute path."""
        return str(self.path.absolute())

    @property
    def folder(self) -> LocalFolder:
        """The folder it is in."""
        return LocalFolder(self.path.absolute().parent, self.path.parent)

    def read(self) -> bytes:
        """The file's bytes, its size checked before it is read."""
        path = self.path
        if not path.exists():
            raise ManifestError("the file does not exist", file=path)
        if not path.is_file():
            raise ManifestError("is not a file", file=path)
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:  # refused before it is read into memory
            raise too_big(size, str(path))
        return path.read_bytes()
