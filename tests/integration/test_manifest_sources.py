"""A manifest's folder on this machine and under an S3 prefix (a real S3-protocol server on
loopback) hold a file, or refuse it, by the same rules and in the same words."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ManifestError
from pipeline.manifest import load_manifest
from pipeline.manifest.paths import PathProblem
from pipeline.manifest.s3source import S3Folder, s3_manifest
from pipeline.manifest.source import LocalFolder
from pipeline.storage.s3 import S3Store, client_from_environment
from tests.fixtures.books import PNG, THREE_CHAPTERS, write_book
from tests.fixtures.s3 import S3Env

LIMIT = 64
TREE = {
    "a.txt": b"first",
    "sub/b.txt": b"second",
    "sub/deep/c.txt": b"third",
    "big.txt": b"x" * (LIMIT + 1),
}
OUTSIDE = b"not the manifest's"
_PARTS = st.sampled_from(["a.txt", "b.txt", "c.txt", "big.txt", "sub", "deep", "..", ".", ""])
_RELATIVE = st.lists(_PARTS, min_size=1, max_size=5).map("/".join)


def _outcome(read: object) -> tuple[str, bytes | str]:
    try:
        assert callable(read)
        data = read()
    except PathProblem as exc:
        # A folder is a file system's: S3 has only keys, and no object at a folder's name.
        return "refused", str(exc).replace("is not a file", "does not exist")
    assert isinstance(data, bytes)
    return "read", data


@pytest.fixture
def folders(s3: S3Env, tmp_path: Path) -> tuple[LocalFolder, S3Folder]:
    bucket = s3.bucket()
    local = tmp_path / "shows" / "april"
    for relative, data in TREE.items():
        (local / relative).parent.mkdir(parents=True, exist_ok=True)
        (local / relative).write_bytes(data)
        s3.client.put_object(Bucket=bucket, Key=f"shows/april/{relative}", Body=data)
    # Beside the folder, for `..` to find.
    (tmp_path / "shows" / "a.txt").write_bytes(OUTSIDE)
    s3.client.put_object(Bucket=bucket, Key="shows/a.txt", Body=OUTSIDE)
    store = S3Store(bucket, "shows/april", client_from_environment())
    return LocalFolder(local, local), S3Folder(store)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(relative=_RELATIVE)
def test_a_local_folder_and_an_s3_prefix_agree_on_every_path(
    folders: tuple[LocalFolder, S3Folder], relative: str
) -> None:
    local, remote = folders

    expected = _outcome(lambda: local.read(relative, limit=LIMIT, what="a text file"))
    found = _outcome(lambda: remote.read(relative, limit=LIMIT, what="a text file"))

    assert found == expected
    assert found[1] != OUTSIDE


def test_each_file_is_read_whole_or_refused_before_it_is_read(
    folders: tuple[LocalFolder, S3Folder],
) -> None:
    _local, remote = folders

    with remote.open("sub/deep/c.txt", limit=LIMIT, what="an EPUB") as opened:
        assert opened.read() == b"third"
    with pytest.raises(PathProblem, match=r"'big.txt' is 65 bytes; an EPUB may hold at most 64"):
        remote.open("big.txt", limit=LIMIT, what="an EPUB")
    assert remote.name_of("sub/./b.txt") == remote.store.uri_for("sub/b.txt")
    assert remote.base == remote.store.uri_for_prefix()


def test_the_manifest_object_is_named_by_its_uri(s3: S3Env) -> None:
    bucket = s3.bucket()
    s3.client.put_object(Bucket=bucket, Key="p/q/jobs.yaml", Body=b"scripts: []\n")

    source = s3_manifest(f"s3://{bucket}/p/q/jobs.yaml")

    assert (source.shown, source.recorded) == (f"s3://{bucket}/p/q/jobs.yaml",) * 2
    assert source.read() == b"scripts: []\n"
    assert source.folder.base == f"s3://{bucket}/p/q"
    with pytest.raises(ManifestError, match=r"s3://.*/p/: name the manifest's object"):
        s3_manifest(f"s3://{bucket}/p/")


BOOK_MANIFEST = """\
lexicon: names.yaml
book:
  title: A Small Book
  cover: art/cover.png
scripts:
  - id: novel
    text_file: books/small.epub
  - id: note
    text_file: texts/../texts/note.txt
"""


def test_an_s3_manifest_loads_as_the_same_tree_on_disk_does(s3: S3Env, tmp_path: Path) -> None:
    # The EPUB is read as a zip (it seeks), the cover as bytes, the lexicon as YAML.
    files = {
        "shows/april/jobs.yaml": BOOK_MANIFEST.encode(),
        "shows/april/names.yaml": b"Anna: Anya\n",
        "shows/april/art/cover.png": PNG,
        "shows/april/books/small.epub": write_book(tmp_path / "small.epub").read_bytes(),
        "shows/april/texts/note.txt": b"Anna wrote a note.\n",
    }
    bucket = s3.bucket()
    local = tmp_path / "tree"
    for key, data in files.items():
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(data)
        s3.client.put_object(Bucket=bucket, Key=key, Body=data)

    uri = f"s3://{bucket}/shows/april/jobs.yaml"
    from_s3 = load_manifest(uri)
    from_disk = load_manifest(local / "shows/april/jobs.yaml")

    assert (from_s3.manifest, from_s3.destination) == (uri, f"s3://{bucket}/shows/april/out/jobs")
    assert from_s3.book is not None and from_s3.book.cover == PNG
    chapters = [s for s in from_s3.scripts if s.id.startswith("novel/")]
    assert [s.title for s in chapters] == [title for title, _ in THREE_CHAPTERS]
    assert from_s3.model_dump(exclude={"manifest", "destination", "scripts"}) == (
        from_disk.model_dump(exclude={"manifest", "destination", "scripts"})
    )
    assert [(s.id, s.title, s.text, s.lexicon) for s in from_s3.scripts] == [
        (s.id, s.title, s.text, s.lexicon) for s in from_disk.scripts
    ]
    assert from_s3.scripts[-1].text == "Anna wrote a note."
