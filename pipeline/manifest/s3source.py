"""A manifest in S3: the object at `s3://bucket/prefix/jobs.yaml`, and the files it names read
from under `s3://bucket/prefix/`, one object at a time (nothing else under the prefix is listed
or fetched), through `pipeline.storage.s3` and boto3's usual credentials.

An object's size is the one S3 states before its body is read, held to the same limits as a
local file's. A missing object is the manifest's own error (naming the URI, or the manifest's
line and field for a file it names); a missing bucket, refused credentials or an endpoint that
does not answer are `StorageError`s naming the object's URI.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from typing import IO

from pipeline.errors import ManifestError
from pipeline.manifest.models import MAX_MANIFEST_BYTES
from pipeline.manifest.paths import PathProblem, relative_key
from pipeline.manifest.source import too_big
from pipeline.storage import parse_s3_uri
from pipeline.storage.base import InvalidKey, ObjectNotFound
from pipeline.storage.keys import validate_key
from pipeline.storage.s3 import S3Store, client_from_environment

# An EPUB is read as a zip, which seeks: kept in memory up to this size, on disk beyond it.
_SPOOL_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class S3Folder:
    """The manifest's prefix; relative paths are keys under it."""

    store: S3Store

    @property
    def base(self) -> str:
        """`s3://bucket/prefix`."""
        return self.store.uri_for_prefix().rstrip("/")

    def name_of(self, relative: str) -> str:
        """The object's URI."""
        try:
            return self.store.uri_for(self._key(relative))
        except PathProblem:
            return f"{self.base}/{relative}"

    def read(self, relative: str, *, limit: int, what: str) -> bytes:
        """The object's bytes."""
        buffer = io.BytesIO()
        self._get(relative, buffer, limit=limit, what=what)
        return buffer.getvalue()

    def open(self, relative: str, *, limit: int, what: str) -> IO[bytes]:
        """The object, downloaded into an unnamed temporary file."""
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 - returned
        try:
            self._get(relative, spool, limit=limit, what=what)
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool

    def _key(self, relative: str) -> str:
        key = relative_key(relative)
        if key == ".":
            raise PathProblem(f"{relative!r} is not a file")
        try:
            return validate_key(key)
        except InvalidKey as exc:
            raise PathProblem(
                f"{relative!r} contains a backslash; use '/' between folders"
            ) from exc

    def _get(self, relative: str, into: IO[bytes], *, limit: int, what: str) -> None:
        key = self._key(relative)
        try:
            size = self.store.get_into(key, into, limit=limit)
        except ObjectNotFound as exc:
            raise PathProblem(f"{relative!r} does not exist") from exc
        if size > limit:
            raise PathProblem(f"{relative!r} is {size:,} bytes; {what} may hold at most {limit:,}")


@dataclass(frozen=True)
class S3Manifest:
    """A manifest object; `name` is its key under its folder's prefix."""

    uri: str
    folder: S3Folder
    name: str

    @property
    def shown(self) -> str:
        """The URI."""
        return self.uri

    @property
    def recorded(self) -> str:
        """The URI."""
        return self.uri

    def read(self) -> bytes:
        """The object's bytes, its size checked before they are downloaded."""
        buffer = io.BytesIO()
        try:
            size = self.folder.store.get_into(self.name, buffer, limit=MAX_MANIFEST_BYTES)
        except ObjectNotFound:
            raise ManifestError("the object does not exist", file=self.uri) from None
        if size > MAX_MANIFEST_BYTES:
            raise too_big(size, self.uri)
        return buffer.getvalue()


def s3_manifest(uri: str) -> S3Manifest:
    """The manifest at `s3://bucket/prefix/jobs.yaml`, with boto3's client from the
    environment (as an s3:// destination's)."""
    bucket, path = parse_s3_uri(uri)
    shown = f"s3://{bucket}/{path}"
    if not path or uri.endswith("/"):
        raise ManifestError(
            "name the manifest's object, e.g. s3://bucket/prefix/jobs.yaml", file=uri
        )
    prefix, _, name = path.rpartition("/")
    store = S3Store(bucket, prefix, client_from_environment())
    return S3Manifest(shown, S3Folder(store), name)
