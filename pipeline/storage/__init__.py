"""Where outputs and cached segments are stored: a local folder or an S3 bucket.

`open_store(destination)` picks the implementation from the destination string; everything
after that speaks the `ObjectStore` protocol with relative '/'-separated keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pipeline.errors import InputError
from pipeline.files import atomic_write, sha256_file
from pipeline.storage.base import InvalidKey, ObjectNotFound, ObjectStore, StorageError
from pipeline.storage.keys import (
    OUTPUT_EXTENSIONS,
    RESULTS_KEY,
    cache_key_path,
    first_clash,
    output_key,
    release_key,
    validate_key,
)
from pipeline.storage.local import LocalStore
from pipeline.storage.outputs import CONTENT_TYPES, content_type_for, is_audio, output_metadata

if TYPE_CHECKING:
    from pipeline.storage.s3 import S3Store

__all__ = [
    "CONTENT_TYPES",
    "OUTPUT_EXTENSIONS",
    "RESULTS_KEY",
    "InvalidDestination",
    "InvalidKey",
    "LocalStore",
    "ObjectNotFound",
    "ObjectStore",
    "S3Store",
    "StorageError",
    "atomic_write",
    "cache_key_path",
    "content_type_for",
    "first_clash",
    "is_audio",
    "open_store",
    "output_key",
    "output_metadata",
    "parse_s3_uri",
    "release_key",
    "sha256_file",
    "validate_key",
]

# S3's rules for new buckets: 3-63 lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class InvalidDestination(StorageError, InputError):
    """A destination that is neither a folder path nor a well-formed `s3://bucket/prefix`."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/prefix` into bucket and prefix (without surrounding slashes)."""
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        raise InvalidDestination(f"{uri!r} is not an s3:// uri", uri=uri)
    if not _BUCKET.fullmatch(parts.netloc):
        raise InvalidDestination(
            f"{uri!r}: {parts.netloc!r} is not a valid bucket name "
            "(3-63 lowercase letters, digits, dots or hyphens)",
            uri=uri,
        )
    if parts.query or parts.fragment:
        raise InvalidDestination(f"{uri!r}: an s3:// destination takes no '?' or '#'", uri=uri)
    prefix = parts.path.strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except InvalidKey as exc:
            raise InvalidDestination(f"{uri!r}: {exc.message}", uri=uri) from exc
    return parts.netloc, prefix


def open_store(destination: str) -> ObjectStore:
    """The store for a local folder path, a `file://` uri or `s3://bucket/prefix`."""
    if not destination.strip():
        raise InvalidDestination("the destination is empty")
    scheme = urlsplit(destination).scheme
    if scheme == "s3":
        bucket, prefix = parse_s3_uri(destination)
        from pipeline.storage.s3 import S3Store, client_from_environment

        return S3Store(bucket, prefix, client_from_environment())
    if scheme == "file":
        return LocalStore(Path(unquote(urlsplit(destination).path)))
    if "://" in destination:
        raise InvalidDestination(
            f"unsupported destination {destination!r}: use a folder path or s3://bucket/prefix",
            uri=destination,
        )
    return LocalStore(Path(destination).expanduser())


def __getattr__(name: str) -> Any:
    # boto3 takes a good part of a second to import: only S3 destinations pay for it.
    if name == "S3Store":
        from pipeline.storage.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
