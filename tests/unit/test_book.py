"""A manifest's `book:` (which scripts, the cover, the metadata, every error located) and the
book's own files as pure functions: names, FFMETADATA, the playlist."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mutagen.mp4 import MP4

from pipeline.book import ChapterTime, ffmetadata, playlist
from pipeline.manifest import load_manifest
from pipeline.manifest.book import image_type
from pipeline.plan import BookPlan, Chapter, build_plan
from pipeline.storage.keys import book_keys, slug
from tests.unit.test_manifest import failure, located, write

SCRIPTS = """\
scripts:
  - id: intro
    title: Introduction
    text: Hello.
  - id: part1/a
    text: One.
  - id: part1/b
    title: The Second
    text: Two.
  - id: part2/c
    text: Three.
  - id: ivr/menu
    text: Press one.
"""


def manifest(tmp_path: Path, book: str, scripts: str = SCRIPTS, defaults: str = "") -> Path:
    return write(tmp_path, "jobs.yaml", f"job: novel\nbook:\n{book}{defaults}{scripts}")


def image(tmp_path: Path, name: str) -> bytes:
    """A real 16x16 image made by ffmpeg, by the name's extension."""
    path = tmp_path / name
    source = ["-f", "lavfi", "-i", "color=c=red:s=16x16", "-frames:v", "1"]
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", *source, "-y", str(path)], check=True
    )
    return path.read_bytes()


# --- which scripts, titles --------------------------------------------------------------------


def test_a_book_without_a_list_takes_every_script_in_order_titled_or_by_id(
    tmp_path: Path,
) -> None:
    job = load_manifest(manifest(tmp_path, "  title: Novel\n"))

    plan = build_plan(job)

    assert plan.book is not None
    assert [(c.script_id, c.title) for c in plan.book.chapters] == [
        ("intro", "Introduction"),
        ("part1/a", "part1/a"),
        ("part1/b", "The Second"),
        ("part2/c", "part2/c"),
        ("ivr/menu", "ivr/menu"),
    ]
    assert plan.book.folder == "book" and plan.book.cover is None


def test_ids_globs_and_prefixes_choose_the_chapters_in_the_order_given(tmp_path: Path) -> None:
    book = '  scripts: ["part2/", intro, "part1/*"]\n'
    mp3 = "defaults:\n  formats: [mp3]\n"

    plan = build_plan(load_manifest(manifest(tmp_path, book, defaults=mp3)))

    assert plan.book is not None
    assert [c.script_id for c in plan.book.chapters] == ["part2/c", "intro", "part1/a", "part1/b"]
    assert plan.book.title == "novel"  # the job's name when the book has no title
    # Chapters without a wav output write a lossless copy for the book; the others do not.
    copies = {s.script_id: s.output.lossless_copy for s in plan.scripts}
    assert copies == {
        "intro": True,
        "part1/a": True,
        "part1/b": True,
        "part2/c": True,
        "ivr/menu": False,
    }


def test_a_chapter_with_a_wav_output_needs_no_copy(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "  scripts: [intro]\n",
        SCRIPTS.replace("Hello.", "Hello.\n    formats: [wav, mp3]"),
    )

    (intro, *_) = build_plan(load_manifest(path)).scripts

    assert intro.output.formats == ("wav", "mp3") and not intro.output.lossless_copy


@pytest.mark.parametrize(
    ("book", "field", "message"),
    [
        ("  scripts: [intro, nobody]\n", "book.scripts[1]", "'nobody' matches no script"),
        ("  scripts: [intro, 'x*']\n", "book.scripts[1]", "'x*' matches no script"),
        ("  scripts: ['part1/*', part1/a]\n", "book.scripts[1]", "'part1/a' adds no script"),
        ("  scripts: []\n", "book.scripts", "must be a list"),
        ("  scripts: [7]\n", "book.scripts[0]", "must be a script id"),
        ("  title: ''\n", "book.title", "must be a non-empty text"),
        ('  author: "A\\tB"\n', "book.author", "control character"),
        ("  year: 20x6\n", "book.year", "four digits"),
        ("  year: true\n", "book.year", "four digits"),
        ("  folder: ../up\n", "book.folder", "must not contain '..'"),
        ("  folder: cache\n", "book.folder", "reserved"),
        ("  titel: Novel\n", "book.titel", "did you mean 'title'"),
        ("  cover: missing.jpg\n", "book.cover", "'missing.jpg' does not exist"),
        ("  cover: /cover.jpg\n", "book.cover", "is absolute"),
    ],
)
def test_a_bad_book_is_one_located_error(
    tmp_path: Path, book: str, field: str, message: str
) -> None:
    err = failure(manifest(tmp_path, book))

    line, _, where, text = located(err)
    assert where == field
    assert message in text
    assert line is not None and 2 <= line <= 3


def test_a_book_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", f"book: [a]\n{SCRIPTS}")

    assert located(failure(path))[2:] == (
        "book",
        "must be a mapping (title, author, cover, scripts, ...)",
    )


def test_a_script_title_is_checked_where_it_is_written(tmp_path: Path) -> None:
    path = manifest(tmp_path, "  title: Novel\n", SCRIPTS.replace("title: The Second", "title: ''"))

    line, _, field, message = located(failure(path))

    assert (line, field, message) == (11, "scripts[2].title", "must be a non-empty text")


def test_a_script_whose_file_would_be_a_book_file_is_refused(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "  title: Novel\n",
        SCRIPTS + "  - id: book/01-introduction\n    text: Clash.\n    formats: [mp3]\n",
    )

    err = failure(path)

    assert err.field == "book.folder"
    assert "'book/01-introduction.mp3'" in err.message and "another folder" in err.message


# --- the cover --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"), [("cover.jpg", "image/jpeg"), ("cover.png", "image/png")]
)
def test_a_jpeg_or_png_cover_is_read_with_the_job(tmp_path: Path, name: str, kind: str) -> None:
    data = image(tmp_path, name)

    plan = build_plan(load_manifest(manifest(tmp_path, f"  cover: {name}\n")))

    assert plan.book is not None
    assert (plan.book.cover, plan.book.cover_type) == (data, kind)


def test_a_cover_that_is_no_image_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "cover.jpg", "not a picture at all")

    err = failure(manifest(tmp_path, "  cover: cover.jpg\n"))

    assert err.field == "book.cover" and "is not a JPEG or PNG image" in err.message


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("covers")
    return {name: image(folder, name) for name in ("c.jpg", "c.png")}


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_image_cut_short_is_refused(images: dict[str, bytes], data: st.DataObject) -> None:
    whole = images[data.draw(st.sampled_from(sorted(images)))]
    cut = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))

    assert image_type(whole) is not None
    assert image_type(whole[:cut]) is None


# --- file names, chapters, playlist -----------------------------------------------------------


@given(st.text(max_size=120), st.sampled_from(["book", "chapter"]))
def test_a_slug_is_a_safe_non_empty_name(text: str, fallback: str) -> None:
    name = slug(text, fallback)

    assert name and len(name) <= 60
    assert all(ch.isascii() and (ch.isdigit() or ch.islower() or ch == "-") for ch in name)
    assert not name.startswith("-") and not name.endswith("-") and "--" not in name


@given(st.lists(st.text(max_size=30), min_size=1, max_size=120))
def test_every_chapter_gets_its_own_numbered_mp3(titles: list[str]) -> None:
    m4b, m3u, mp3s = book_keys("book", "Any", titles)

    assert len(set(mp3s)) == len(mp3s) == len(titles)
    assert all(k.startswith("book/") and k.endswith(".mp3") for k in mp3s)
    assert sorted(mp3s) == mp3s  # numbered with enough digits to sort in order
    assert {m4b, m3u}.isdisjoint(mp3s)


TRICKY = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
).filter(lambda t: t.strip() == t and t.strip())


@settings(max_examples=15, deadline=None)
@given(title=TRICKY, chapter=TRICKY)
def test_titles_survive_ffmpeg_whatever_they_contain(
    tmp_path_factory: pytest.TempPathFactory, title: str, chapter: str
) -> None:
    folder = tmp_path_factory.mktemp("meta")
    book = BookPlan(title=title, chapters=(Chapter("a", chapter),), folder="book", author="A=B;C#")
    text = ffmetadata(book, [ChapterTime("a", chapter, 0.0, 1.0, "book/01-a.mp3")], 8000)
    (folder / "meta.txt").write_text(text, encoding="utf-8")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    # Written into a tiny file and read back: what a player would show.
    inputs = ["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-f", "ffmetadata"]
    inputs += ["-i", str(folder / "meta.txt")]
    maps = ["-map", "0:a", "-map_metadata", "1", "-map_chapters", "1", "-t", "1"]
    encode = ["-c:a", "aac", "-f", "ipod", "-y", str(folder / "t.m4b")]
    subprocess.run([ffmpeg, "-v", "error", *inputs, *maps, *encode], check=True)

    tags = MP4(folder / "t.m4b").tags
    assert tags is not None
    assert tags["\xa9nam"] == [title] and tags["\xa9ART"] == ["A=B;C#"]
    back = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(folder / "t.m4b"), "-f", "ffmetadata", "-"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert f"title={text.split('title=')[-1].strip()}" in back


def test_the_playlist_lists_each_mp3_beside_it_with_its_duration_and_title() -> None:
    book = BookPlan(title="Novel", chapters=(), folder="audio/novel", author="Ada\nWriter")
    times = [
        ChapterTime("a", "One", 0.0, 61.4, "audio/novel/01-one.mp3"),
        ChapterTime("b", "Two\tparts", 61.4, 0.6, "audio/novel/02-two-parts.mp3"),
    ]

    assert playlist(book, times, book.folder).splitlines() == [
        "#EXTM3U",
        "#PLAYLIST:Novel",
        "#EXTINF:61,Ada Writer - One",
        "01-one.mp3",
        "#EXTINF:1,Ada Writer - Two parts",
        "02-two-parts.mp3",
    ]


def test_chapter_marks_follow_each_other_in_samples() -> None:
    book = BookPlan(title="T", chapters=(), folder="book")
    times = [ChapterTime("a", "A", 0.0, 1.5, "x"), ChapterTime("b", "B", 1.5, 2.25, "y")]

    text = ffmetadata(book, times, 24000)

    assert "[CHAPTER]\nTIMEBASE=1/24000\nSTART=0\nEND=36000\ntitle=A\n" in text
    assert "[CHAPTER]\nTIMEBASE=1/24000\nSTART=36000\nEND=90000\ntitle=B\n" in text
