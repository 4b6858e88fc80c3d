"""Object storage against real files and a real S3 protocol server on loopback."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

import pytest
from boto3.s3.transfer import TransferConfig
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import InputError, RimeBatchError
from pipeline.storage import (
    InvalidDestination,
    InvalidKey,
    LocalStore,
    ObjectNotFound,
    S3Store,
    StorageError,
    atomic_write,
    cache_key_path,
    content_type_for,
    open_store,
    output_metadata,
    parse_s3_uri,
    sha256_file,
)
from pipeline.storage.s3 import client_from_environment
from tests.fixtures.s3 import S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, DenyingS3, S3Env
from tests.fixtures.services import closed_port, poll_until

MIB = 1024 * 1024
ESCAPING_KEYS = ["", "/etc/passwd", "../outside.wav", "a/../../b.wav", "a//b.wav", "./a.wav",
                 "a/..", "a\\..\\b.wav"]  # fmt: skip


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


# --- local folder ---------------------------------------------------------------------------


def test_local_round_trip_and_listing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    uri = store.put_bytes("chapter-1/intro.wav", b"RIFF-intro")
    store.put_bytes("chapter-1/outro.wav", b"RIFF-outro")
    store.put_bytes("cache/ab/abcdef.wav", b"cached")

    assert uri == str(tmp_path / "out" / "chapter-1" / "intro.wav")
    assert Path(uri).read_bytes() == b"RIFF-intro"
    assert store.get_bytes("chapter-1/intro.wav") == b"RIFF-intro"
    assert store.exists("chapter-1/outro.wav")
    assert not store.exists("chapter-1/missing.wav")
    assert list(store.list_keys()) == [
        "cache/ab/abcdef.wav",
        "chapter-1/intro.wav",
        "chapter-1/outro.wav",
    ]
    assert list(store.list_keys("chapter-1/o")) == ["chapter-1/outro.wav"]
    assert list(store.list_keys("nothing/here")) == []

    copy = store.get_to_file("chapter-1/outro.wav", tmp_path / "copies" / "outro.wav")
    assert copy.read_bytes() == b"RIFF-outro"

    store.delete("chapter-1/outro.wav")
    store.delete("chapter-1/outro.wav")  # deleting twice is not an error
    assert not store.exists("chapter-1/outro.wav")


def test_local_put_file_is_atomic(tmp_path: Path) -> None:
    """While the copy runs, only a hidden temp file exists; the final name appears complete."""
    store = LocalStore(tmp_path / "out")
    folder = tmp_path / "out" / "book"
    target = folder / "chapter.wav"
    # A FIFO as the source lets the test hold the copy half-way for as long as it likes.
    fifo = tmp_path / "source.fifo"
    os.mkfifo(fifo)
    payload = os.urandom(3 * MIB)
    uris: list[str] = []
    worker = threading.Thread(target=lambda: uris.append(store.put_file("book/chapter.wav", fifo)))
    worker.start()
    try:
        with fifo.open("wb") as writer:
            writer.write(payload[:MIB])
            writer.flush()
            poll_until(
                lambda: any(p.stat().st_size > 0 for p in _temp_files(tmp_path / "out")),
                10,
                "the copy to start",
                interval=0.01,
            )

            temps = _temp_files(tmp_path / "out")
            assert [p.parent for p in temps] == [folder]
            assert temps[0].name.startswith(".chapter.wav.")
            assert not target.exists()
            assert not store.exists("book/chapter.wav")
            assert list(store.list_keys()) == []

            writer.write(payload[MIB:])
    finally:
        worker.join(timeout=30)

    assert uris == [str(target)]
    assert target.read_bytes() == payload
    assert _temp_files(tmp_path / "out") == []


def test_local_overwrite_swaps_whole_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a.wav", b"old" * 1000)
    with (tmp_path / "a.wav").open("rb") as reader:
        store.put_bytes("a.wav", b"new" * 2000)
        # A reader that opened the old file keeps reading the old file, whole.
        assert reader.read() == b"old" * 1000
    assert store.get_bytes("a.wav") == b"new" * 2000


def test_failed_atomic_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.wav"
    target.write_bytes(b"complete")

    def write_half_then_fail(fh: object) -> None:
        assert hasattr(fh, "write")
        fh.write(b"part")
        raise RuntimeError("encoder died")

    with pytest.raises(RuntimeError, match="encoder died"):
        atomic_write(target, write_half_then_fail)
    assert target.read_bytes() == b"complete"
    assert _temp_files(tmp_path) == []


@pytest.mark.parametrize("key", ESCAPING_KEYS)
def test_local_rejects_keys_that_escape_the_root(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root"
    store = LocalStore(root)
    with pytest.raises(InvalidKey) as caught:
        store.put_bytes(key, b"x")
    assert isinstance(caught.value, StorageError)
    assert repr(key) in str(caught.value) or "empty" in str(caught.value)
    with pytest.raises(InvalidKey):
        store.exists(key)
    assert list(tmp_path.rglob("*")) == []


def test_local_missing_object_and_missing_source(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    with pytest.raises(ObjectNotFound) as caught:
        store.get_bytes("nope.wav")
    assert caught.value.uri == str(tmp_path / "out" / "nope.wav")
    with pytest.raises(ObjectNotFound):
        store.get_to_file("nope.wav", tmp_path / "dest.wav")
    assert not (tmp_path / "dest.wav").exists()

    with pytest.raises(StorageError) as caught_source:
        store.put_file("x.wav", tmp_path / "no-such-source.wav")
    message = str(caught_source.value)
    assert "no-such-source.wav" in message
    assert str(tmp_path / "out" / "x.wav") in message
    assert not (tmp_path / "out" / "x.wav").exists()


def test_local_check_creates_the_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "new" / "deeper")
    store.check()
    assert (tmp_path / "new" / "deeper").is_dir()

    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(StorageError, match="a-file"):
        LocalStore(tmp_path / "a-file" / "sub").check()


def test_segment_cache_lives_in_the_store(tmp_path: Path) -> None:
    key = hashlib.sha256(b"segment inputs").hexdigest()
    path = cache_key_path(key)
    assert path == f"cache/{key[:2]}/{key}.wav"

    store = LocalStore(tmp_path)
    assert not store.exists(path)
    store.put_bytes(path, b"RIFF....WAVE")
    assert store.exists(path)
    assert (tmp_path / "cache" / key[:2] / f"{key}.wav").read_bytes() == b"RIFF....WAVE"

    for bad in ["", "a", "../../etc", "ab/cd", "ab.cd"]:
        with pytest.raises(InvalidKey):
            cache_key_path(bad)


# --- pure helpers ---------------------------------------------------------------------------


def test_sha256_file_streams_to_the_same_digest(tmp_path: Path) -> None:
    data = os.urandom(3 * MIB + 17)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_content_types() -> None:
    assert content_type_for("wav") == "audio/wav"
    assert content_type_for("wav-mulaw") == "audio/wav"
    assert content_type_for("mulaw") == "audio/basic"
    assert content_type_for("mp3") == "audio/mpeg"
    assert content_type_for("ogg") == "audio/ogg"
    with pytest.raises(ValueError, match="flac"):
        content_type_for("flac")


def test_output_metadata_shape() -> None:
    meta = output_metadata("job-7", "cove", "mistv2", 12.34567, "ab" * 32)
    assert meta == {
        "job-id": "job-7",
        "speaker": "cove",
        "model": "mistv2",
        "duration-s": "12.346",
        "sha256": "ab" * 32,
    }


@given(job_id=st.text(), speaker=st.text())
def test_output_metadata_values_are_header_safe_and_reversible(job_id: str, speaker: str) -> None:
    meta = output_metadata(job_id, speaker, "arcana", 1.0, "0" * 64)
    for name, value in meta.items():
        assert name == name.lower() and name.replace("-", "").isalnum()
        assert all(0x20 <= ord(c) < 0x7F for c in value)
    assert unquote(meta["job-id"]) == job_id
    assert unquote(meta["speaker"]) == speaker


# --- destinations ---------------------------------------------------------------------------


def test_open_store_local_destinations(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "out"))
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "out"
    assert store.uri_for("a/b.mp3") == str(tmp_path / "out" / "a" / "b.mp3")

    from_uri = open_store((tmp_path / "with space").as_uri())
    assert isinstance(from_uri, LocalStore)
    assert from_uri.root == tmp_path / "with space"


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("s3://renders", "renders", ""),
        ("s3://renders/", "renders", ""),
        ("s3://renders/jobs/2024/", "renders", "jobs/2024"),
        ("s3://my.bucket-1/a", "my.bucket-1", "a"),
    ],
)
def test_parse_s3_uri(uri: str, bucket: str, prefix: str) -> None:
    assert parse_s3_uri(uri) == (bucket, prefix)


@pytest.mark.parametrize(
    "destination",
    ["s3://", "s3://Upper/x", "s3://b", "s3://bucket/../up", "s3://bucket/a//b", "gs://bucket/x",
     "https://example.com/x", "   "],
)  # fmt: skip
def test_bad_destinations_are_input_errors(destination: str) -> None:
    with pytest.raises(InvalidDestination) as caught:
        open_store(destination)
    assert isinstance(caught.value, InputError)
    assert isinstance(caught.value, RimeBatchError)
    assert destination.strip() in str(caught.value) or "empty" in str(caught.value)


# --- S3 over loopback -----------------------------------------------------------------------


def test_open_store_s3_uses_the_environment(s3: S3Env) -> None:
    bucket = s3.bucket()
    store = open_store(f"s3://{bucket}/renders/job-1/")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == (bucket, "renders/job-1")
    assert store.uri_for("a.wav") == f"s3://{bucket}/renders/job-1/a.wav"

    store.put_bytes("a.wav", b"hello")
    # The object is where the uri says, seen through an independent client.
    body = s3.client.get_object(Bucket=bucket, Key="renders/job-1/a.wav")["Body"].read()
    assert body == b"hello"


def test_s3_round_trip_listing_and_delete(s3: S3Env, tmp_path: Path) -> None:
    bucket = s3.bucket()
    store = S3Store(bucket, "job-9", client_from_environment())
    other = S3Store(bucket, "job-90", client_from_environment())
    other.put_bytes("intro.wav", b"not mine")

    assert not store.exists("intro.wav")
    uri = store.put_bytes("intro.wav", b"RIFF-intro")
    store.put_bytes("cache/ab/abc.wav", b"cached")
    assert uri == f"s3://{bucket}/job-9/intro.wav"
    assert store.exists("intro.wav")
    assert store.get_bytes("intro.wav") == b"RIFF-intro"
    # A sibling prefix that merely starts with the same characters is not listed.
    assert list(store.list_keys()) == ["cache/ab/abc.wav", "intro.wav"]
    assert list(store.list_keys("cache/")) == ["cache/ab/abc.wav"]

    copy = store.get_to_file("intro.wav", tmp_path / "local" / "intro.wav")
    assert copy.read_bytes() == b"RIFF-intro"
    assert _temp_files(tmp_path) == []

    store.delete("intro.wav")
    assert not store.exists("intro.wav")
    assert other.get_bytes("intro.wav") == b"not mine"
    with pytest.raises(ObjectNotFound) as caught:
        store.get_bytes("intro.wav")
    assert caught.value.uri == f"s3://{bucket}/job-9/intro.wav"


def test_s3_small_put_file_carries_type_and_metadata(s3: S3Env, tmp_path: Path) -> None:
    bucket = s3.bucket()
    store = S3Store(bucket, "", client_from_environment())
    source = tmp_path / "intro.mp3"
    source.write_bytes(os.urandom(40_000))
    digest = sha256_file(source)
    meta = output_metadata("job-1", "cove", "mistv2", 3.5, digest)

    uri = store.put_file("intro.mp3", source, content_type=content_type_for("mp3"), metadata=meta)

    assert uri == f"s3://{bucket}/intro.mp3"
    head = s3.client.head_object(Bucket=bucket, Key="intro.mp3")
    assert head["ContentType"] == "audio/mpeg"
    assert head["Metadata"] == meta
    assert head["ContentLength"] == 40_000
    assert "-" not in head["ETag"]  # one PUT, not a multipart upload
    assert hashlib.sha256(store.get_bytes("intro.mp3")).hexdigest() == digest


def test_s3_large_put_file_goes_multipart(s3: S3Env, tmp_path: Path) -> None:
    bucket = s3.bucket()
    parts = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    store = S3Store(bucket, "big", client_from_environment(), transfer=parts)
    source = tmp_path / "chapter.wav"
    source.write_bytes(os.urandom(12 * MIB))

    store.put_file("chapter.wav", source, content_type="audio/wav", metadata={"sha256": "x"})

    head = s3.client.head_object(Bucket=bucket, Key="big/chapter.wav")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB
    assert head["ContentLength"] == 12 * MIB
    assert head["ContentType"] == "audio/wav"
    assert head["Metadata"] == {"sha256": "x"}
    back = store.get_to_file("chapter.wav", tmp_path / "back.wav")
    assert sha256_file(back) == sha256_file(source)


def test_s3_missing_bucket_is_a_clear_error(s3: S3Env, tmp_path: Path) -> None:
    store = open_store("s3://no-such-bucket-here/out")
    source = tmp_path / "a.wav"
    source.write_bytes(b"RIFF")

    for action in (
        lambda: store.put_bytes("a.wav", b"RIFF"),
        lambda: store.put_file("a.wav", source),
        lambda: store.get_bytes("a.wav"),
        store.check,
    ):
        with pytest.raises(StorageError) as caught:
            action()
        message = str(caught.value)
        assert not isinstance(caught.value, ObjectNotFound)
        assert "s3://no-such-bucket-here/out" in message
        assert "'no-such-bucket-here' does not exist" in message
        assert S3_SECRET_ACCESS_KEY not in message
        assert S3_ACCESS_KEY_ID not in message
    # A HEAD cannot tell a missing bucket from a missing key; check() is there for that.
    assert not store.exists("a.wav")


def test_s3_unreachable_endpoint_is_a_storage_error(
    s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    with closed_port() as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        store = open_store("s3://some-bucket/p")
        with pytest.raises(StorageError) as caught:
            store.put_bytes("k.wav", b"x")
    message = str(caught.value)
    assert message.startswith("cannot upload to s3://some-bucket/p/k.wav: ")
    assert f"127.0.0.1:{port}" in message
    assert S3_SECRET_ACCESS_KEY not in message


def test_s3_rejects_escaping_keys(s3: S3Env) -> None:
    store = S3Store(s3.bucket(), "p", client_from_environment())
    for key in ESCAPING_KEYS:
        with pytest.raises(InvalidKey):
            store.put_bytes(key, b"x")
    assert list(store.list_keys()) == []


def test_s3_get_of_a_missing_key_is_object_not_found_and_leaves_no_file(
    s3: S3Env, tmp_path: Path
) -> None:
    store = S3Store(s3.bucket(), "p", client_from_environment())
    for action in (
        lambda: store.get_bytes("cache/ab/absent.wav"),
        lambda: store.get_to_file("cache/ab/absent.wav", tmp_path / "dl" / "absent.wav"),
    ):
        with pytest.raises(ObjectNotFound) as caught:
            action()
        assert caught.value.uri == store.uri_for("cache/ab/absent.wav")
    assert not (tmp_path / "dl" / "absent.wav").exists()
    assert _temp_files(tmp_path) == []


def test_s3_access_denied_is_a_storage_error_never_a_missing_object(
    s3: S3Env, denying_s3: DenyingS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", denying_s3.endpoint_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", denying_s3.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", denying_s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", denying_s3.secret_access_key)
    store = open_store(f"s3://{denying_s3.bucket}/out")
    source = tmp_path / "a.wav"
    source.write_bytes(b"RIFF")

    for name, action in {
        "put_bytes": lambda: store.put_bytes("a.wav", b"RIFF"),
        "put_file": lambda: store.put_file("a.wav", source),
        "get_bytes": lambda: store.get_bytes("a.wav"),
        "get_to_file": lambda: store.get_to_file("a.wav", tmp_path / "dl.wav"),
        "list_keys": lambda: list(store.list_keys()),
        "check": store.check,
    }.items():
        with pytest.raises(StorageError) as caught:
            action()
        message = str(caught.value)
        # Denied is not absent: a cache lookup must not take it for a miss and pay Rime again.
        assert not isinstance(caught.value, ObjectNotFound), name
        assert f"s3://{denying_s3.bucket}/out" in message, (name, message)
        assert "AccessDenied" in message or "403" in message, (name, message)
        assert denying_s3.secret_access_key not in message, name
    assert not (tmp_path / "dl.wav").exists()


def test_s3_upload_to_a_closed_port_fails_as_a_storage_error(
    s3: S3Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = tmp_path / "chapter.wav"
    source.write_bytes(os.urandom(64 * 1024))
    with closed_port() as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        store = open_store("s3://some-bucket/p")
        with pytest.raises(StorageError) as caught:
            store.put_file("chapter.wav", source)
    message = str(caught.value)
    assert message.startswith(f"cannot upload {source} to s3://some-bucket/p/chapter.wav: ")
    assert S3_SECRET_ACCESS_KEY not in message


@contextmanager
def resetting_server() -> Iterator[int]:
    """A loopback port whose server reads a request's first bytes, then resets the connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.recv(1024)
                # Linger 0: close sends RST instead of FIN.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_s3_connection_reset_mid_request_fails_as_a_storage_error(
    s3: S3Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = tmp_path / "chapter.wav"
    source.write_bytes(os.urandom(64 * 1024))
    with resetting_server() as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        store = open_store("s3://some-bucket/p")
        for action, prefix in (
            (lambda: store.put_file("chapter.wav", source), f"cannot upload {source} to"),
            (lambda: store.put_bytes("chapter.wav", b"RIFF"), "cannot upload to"),
            (lambda: store.get_bytes("chapter.wav"), "cannot download"),
        ):
            with pytest.raises(StorageError) as caught:
                action()
            assert not isinstance(caught.value, ObjectNotFound)
            assert str(caught.value).startswith(f"{prefix} s3://some-bucket/p/chapter.wav: ")


def test_s3_listing_pages_past_a_thousand_keys(s3: S3Env) -> None:
    bucket = s3.bucket()
    store = S3Store(bucket, "job", client_from_environment())
    # S3 returns at most 1,000 keys a response: 1,001 take two pages.
    keys = [f"cache/{i % 7:02d}/{i:05d}.wav" for i in range(1001)]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(lambda k: s3.client.put_object(Bucket=bucket, Key=f"job/{k}", Body=b""), keys)
        )
    s3.client.put_object(Bucket=bucket, Key="jobs/elsewhere.wav", Body=b"")

    assert list(store.list_keys()) == sorted(keys)
    assert list(store.list_keys("cache/03/")) == sorted(
        k for k in keys if k.startswith("cache/03/")
    )


def test_local_copy_replaces_the_target_in_one_step_and_shares_the_bytes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("releases/a/intro.wav", b"old voice")
    store.put_bytes("releases/b/intro.wav", b"new voice")
    store.copy("releases/a/intro.wav", "intro.wav")
    held = (tmp_path / "intro.wav").open("rb")  # a reader holding the old file open

    uri = store.copy("releases/b/intro.wav", "intro.wav")
    store.sync(["intro.wav"])

    assert uri == str(tmp_path / "intro.wav")
    assert store.get_bytes("intro.wav") == b"new voice"
    assert held.read() == b"old voice"  # a rename never rewrites what a reader has open
    held.close()
    # A hard link: the stable file is the release's file, no second copy of the audio.
    assert (
        os.stat(tmp_path / "intro.wav").st_ino == os.stat(tmp_path / "releases/b/intro.wav").st_ino
    )
    assert _temp_files(tmp_path) == []
    # Again: the target is already that file (a publish run a second time).
    store.copy("releases/b/intro.wav", "intro.wav")
    assert store.get_bytes("intro.wav") == b"new voice"
    assert _temp_files(tmp_path) == []
    with pytest.raises(ObjectNotFound):
        store.copy("releases/c/missing.wav", "missing.wav")
    assert not (tmp_path / "missing.wav").exists() and _temp_files(tmp_path) == []


def test_local_delete_leaves_no_empty_folder_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("releases/a/ivr/menu.wav", b"1")
    store.put_bytes("releases/a/ivr/hold.wav", b"2")
    store.put_bytes("releases/b/ivr/menu.wav", b"3")

    store.delete("releases/a/ivr/menu.wav")
    assert (tmp_path / "releases/a/ivr").is_dir()  # still holds hold.wav
    store.delete("releases/a/ivr/hold.wav")

    assert not (tmp_path / "releases/a").exists()
    assert store.get_bytes("releases/b/ivr/menu.wav") == b"3"
    assert tmp_path.is_dir()  # never the root itself
    store.put_bytes("releases/a/ivr/menu.wav", b"again")  # a write recreates what it needs
    assert store.get_bytes("releases/a/ivr/menu.wav") == b"again"


def test_s3_copy_keeps_type_and_metadata(s3: S3Env, tmp_path: Path) -> None:
    bucket = s3.bucket()
    store = S3Store(bucket, "ivr", client_from_environment())
    meta = output_metadata("job-1", "cove", "mistv2", 1.5, "ab" * 32)
    store.put_bytes("releases/j1/intro.wav", b"RIFF-new", content_type="audio/wav", metadata=meta)
    store.put_bytes("intro.wav", b"RIFF-old")

    uri = store.copy("releases/j1/intro.wav", "intro.wav")
    store.sync(["intro.wav"])

    assert uri == f"s3://{bucket}/ivr/intro.wav"
    assert store.get_bytes("intro.wav") == b"RIFF-new"
    head = s3.client.head_object(Bucket=bucket, Key="ivr/intro.wav")
    assert head["ContentType"] == "audio/wav"
    assert head["Metadata"] == meta
    with pytest.raises(ObjectNotFound):
        store.copy("releases/j2/missing.wav", "missing.wav")
