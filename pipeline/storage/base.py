"""The object store interface and its errors.

    RimeBatchError
    └── StorageError          reading or writing the destination failed; names the uri
        ├── ObjectNotFound    the key holds no object
        └── InvalidKey        a key that is empty, absolute or would leave the store's root

Messages name the uri and the provider's error code, never credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

from pipeline.errors import RimeBatchError


class StorageError(RimeBatchError):
    """An object store operation failed; `uri` names the object or destination."""

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        self.message = message
        self.uri = uri
        super().__init__(message)


class ObjectNotFound(StorageError):
    """No object is stored under the requested key."""


class InvalidKey(StorageError):
    """A key that is empty, absolute, or escapes the store's root."""


class ObjectStore(Protocol):
    """Where finished outputs and cached segments live.

    Keys are relative and '/'-separated (`chapter-1/intro.mp3`, `cache/ab/ab12….wav`); a store
    maps them under its root (a folder, or a bucket and prefix). Writes are atomic: a reader sees
    either no object or the whole object, never a partial one. `exists` is one cheap call (a
    stat or a HEAD request), so it serves as the segment cache's hit check.
    """

    def uri_for(self, key: str) -> str:
        """The object's location as a path or `s3://bucket/key` uri."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        ...

    def put_file(
        self,
        key: str,
        local_path: Path,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Store a local file's bytes under `key` and return its uri."""
        ...

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Store `data` under `key` and return its uri."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; `ObjectNotFound` when there is none."""
        ...

    def get_to_file(self, key: str, local_path: Path) -> Path:
        """Write the object to `local_path` atomically and return that path."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The file that holds `key` when the store is a folder on this machine, else None.

        Read it in place, or write it yourself (atomically, through `pipeline.files`) instead
        of copying a finished file in.
        """
        ...

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys that start with `prefix`, in lexical order."""
        ...

    def copy(self, source: str, target: str) -> str:
        """Put the object at `source` under `target` too, atomically; the target's uri.

        Inside the store, without downloading: how a release's outputs reach the stable paths.
        Durable once `sync` has been called for the target.
        """
        ...

    def sync(self, keys: Iterable[str]) -> None:
        """Make the copies to `keys` durable (one flush per folder, however many files)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object under `key`; nothing happens when there is none."""
        ...

    def check(self) -> None:
        """Raise `StorageError` unless the destination exists and can be written."""
        ...
