"""An object store in an S3 bucket under a key prefix, through boto3."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.files import atomic_write
from pipeline.storage.base import ObjectNotFound, StorageError
from pipeline.storage.keys import join_key, validate_key, validate_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
# An hour of 24 kHz 16-bit mono WAV is about 170 MB: 16 MiB parts keep that near ten parts,
# and four threads keep a small machine's other work responsive during an upload.
DEFAULT_TRANSFER = TransferConfig(
    multipart_threshold=16 * MIB, multipart_chunksize=16 * MIB, max_concurrency=4
)
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_COPY_BUFFER = 1024 * 1024


def client_from_environment() -> S3Client:
    """An S3 client configured by boto3 from the standard AWS variables, files and profiles."""
    # A fresh session per client: boto3's default session is not thread-safe to create.
    return boto3.session.Session().client("s3")


class S3Store:
    """Objects in `bucket` under `prefix`; large files are uploaded in parts."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: S3Client,
        *,
        transfer: TransferConfig | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = validate_prefix(prefix).strip("/")
        self.client = client
        self.transfer = transfer or DEFAULT_TRANSFER

    def __repr__(self) -> str:
        return f"S3Store({self.uri_for_prefix()!r})"

    def object_key(self, key: str) -> str:
        """The bucket key that holds `key`."""
        return join_key(self.prefix, validate_key(key))

    def uri_for(self, key: str) -> str:
        """`s3://bucket/prefix/key`."""
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def uri_for_prefix(self) -> str:
        """`s3://bucket/prefix`, the destination this store writes under."""
        return f"s3://{self.bucket}/{self.prefix}"

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key` (one HEAD request)."""
        uri = self.uri_for(key)
        try:
            with _s3_errors("cannot look up", uri, self.bucket):
                self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ObjectNotFound:
            return False
        return True

    def put_file(
        self,
        key: str,
        local_path: Path,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Upload `local_path` under `key`; multipart above the transfer threshold."""
        uri = self.uri_for(key)
        with _s3_errors(f"cannot upload {local_path} to", uri, self.bucket):
            self.client.upload_file(
                Filename=str(local_path),
                Bucket=self.bucket,
                Key=self.object_key(key),
                ExtraArgs=_extra_args(content_type, metadata),
                Config=self.transfer,
            )
        return uri

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Store `data` under `key` in one request."""
        uri = self.uri_for(key)
        with _s3_errors("cannot upload to", uri, self.bucket):
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.object_key(key),
                Body=data,
                **_extra_args(content_type, metadata),
            )
        return uri

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes."""
        uri = self.uri_for(key)
        with _s3_errors("cannot download", uri, self.bucket):
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            with response["Body"] as body:
                return body.read()

    def get_into(self, key: str, into: IO[bytes], *, limit: int) -> int:
        """The object's size; its bytes are streamed into `into` only when it holds at most
        `limit` (the size S3 states is checked before the body is read)."""
        uri = self.uri_for(key)
        with _s3_errors("cannot download", uri, self.bucket):
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            with response["Body"] as body:
                size = int(response["ContentLength"])
                if size <= limit:
                    shutil.copyfileobj(body, into, _COPY_BUFFER)
                return size

    def get_to_file(self, key: str, local_path: Path) -> Path:
        """Stream the object into `local_path` atomically."""
        uri = self.uri_for(key)
        with _s3_errors(f"cannot download to {local_path} from", uri, self.bucket):
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            with response["Body"] as body:
                return atomic_write(
                    Path(local_path), lambda fh: shutil.copyfileobj(body, fh, _COPY_BUFFER)
                )

    def local_path(self, key: str) -> None:
        """None: objects in a bucket are reached through downloads and uploads."""
        validate_key(key)
        return None

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys under the store's prefix that start with `prefix`, in lexical order."""
        validate_prefix(prefix)
        full_prefix = join_key(self.prefix, prefix)
        strip = len(join_key(self.prefix, ""))
        paginator = self.client.get_paginator("list_objects_v2")
        with _s3_errors("cannot list", f"s3://{self.bucket}/{full_prefix}", self.bucket):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for item in page.get("Contents", []):
                    yield item["Key"][strip:]

    def copy(self, source: str, target: str) -> str:
        """A server-side copy (metadata and content type kept); multipart for large objects."""
        uri = self.uri_for(target)
        with _s3_errors(f"cannot copy {self.uri_for(source)} to", uri, self.bucket):
            self.client.copy(
                {"Bucket": self.bucket, "Key": self.object_key(source)},
                self.bucket,
                self.object_key(target),
                Config=self.transfer,
            )
        return uri

    def sync(self, keys: Iterable[str]) -> None:
        """Nothing: an S3 write is durable once it returns."""

    def delete(self, key: str) -> None:
        """Remove the object under `key`; S3 treats a missing one as deleted."""
        uri = self.uri_for(key)
        with _s3_errors("cannot delete", uri, self.bucket):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def check(self) -> None:
        """Make sure the bucket exists and these credentials may use it."""
        uri = self.uri_for_prefix()
        try:
            with _s3_errors("cannot use", uri, self.bucket):
                self.client.head_bucket(Bucket=self.bucket)
        except ObjectNotFound as exc:
            # HEAD responses have no body, so a missing bucket shows up as a bare 404.
            raise StorageError(
                f"cannot use {uri}: bucket {self.bucket!r} does not exist", uri=uri
            ) from exc


def _extra_args(content_type: str | None, metadata: Mapping[str, str] | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if content_type:
        extra["ContentType"] = content_type
    if metadata:
        extra["Metadata"] = dict(metadata)
    return extra


@contextmanager
def _s3_errors(action: str, uri: str, bucket: str) -> Iterator[None]:
    """Turn boto, botocore and local file errors into `StorageError`s that name `uri`."""
    try:
        yield
    except S3UploadFailedError as exc:
        # boto3 raises this while handling the ClientError that says what went wrong.
        cause = exc.__context__
        if isinstance(cause, ClientError):
            raise _from_client_error(action, uri, bucket, cause) from exc
        raise StorageError(f"{action} {uri}: the upload failed", uri=uri) from exc
    except ClientError as exc:
        raise _from_client_error(action, uri, bucket, exc) from exc
    except BotoCoreError as exc:
        # botocore's own messages name endpoints and settings, never credential values.
        raise StorageError(f"{action} {uri}: {exc}", uri=uri) from exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StorageError(f"{action} {uri}: {reason}", uri=uri) from exc


def _from_client_error(action: str, uri: str, bucket: str, exc: ClientError) -> StorageError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "unknown"))
    if code in _NO_BUCKET:
        return StorageError(f"{action} {uri}: bucket {bucket!r} does not exist", uri=uri)
    if code in _NOT_FOUND:
        return ObjectNotFound(f"no object at {uri}", uri=uri)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    detail = str(error.get("Message") or f"HTTP {status}")
    return StorageError(f"{action} {uri}: {code}: {detail}", uri=uri)
