"""Script entries that expand into chapters: EPUBs written by ebooklib, split texts, bad books."""

from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path

import pytest

from pipeline.errors import ManifestError
from pipeline.manifest import load_manifest
from pipeline.manifest.models import MAX_EPUB_READ_BYTES, MAX_SCRIPTS
from pipeline.plan import plan_manifest
from tests.fixtures.books import THREE_CHAPTERS, entry_named, rezip, write_book


def manifest(folder: Path, entry: str, defaults: str = "{speaker: cove, formats: [mp3]}") -> Path:
    path = folder / "jobs.yaml"
    path.write_text(f"defaults: {defaults}\nscripts:\n  - id: intro\n    text: Hello.\n{entry}")
    return path


BOOK_ENTRY = "  - id: book\n    text_file: book.epub\n    speed: 1.5\n"


def test_an_epub_becomes_one_script_per_chapter_in_spine_order(tmp_path: Path) -> None:
    write_book(tmp_path / "book.epub")

    job = load_manifest(manifest(tmp_path, BOOK_ENTRY))

    intro, *chapters = job.scripts
    assert intro.title is None
    assert [s.id for s in chapters] == [
        "book/01-the-storm",
        "book/02-the-letter",
        "book/03-home-again",
    ]
    assert [s.title for s in chapters] == [title for title, _ in THREE_CHAPTERS]
    assert chapters[0].text == (
        "Chapter One\n\nThe rain had stopped by noon. The street was quiet again.\n\n"
        "Anna opened the window.\nA cold breeze filled the room."
    )
    assert chapters[1].text.startswith("Chapter Two\n\n")
    assert all(s.voice.speed == 1.5 and s.voice.formats == ("mp3",) for s in chapters)
    assert all(s.text_file == "book.epub" and s.source.line == 5 for s in chapters)
    # No note, marker or page number reached any chapter.
    assert not re.search(r"three days|grandmother|\b[12]\b", " ".join(s.text for s in chapters))


def test_front_matter_the_contents_leave_out_is_skipped_and_unlisted_files_continue(
    tmp_path: Path,
) -> None:
    chapters = [
        ("Title page", "<p>A Small Book</p><p>by A. Writer</p>"),
        ("One", "<h2>One</h2><p>First half.</p>"),
        ("One, continued", "<p>Second half.</p>"),
        ("Copyright", "<section epub:type='copyright-page'><p>All rights reserved.</p></section>"),
        ("Blank", "<div></div>"),
        ("Two", "<h2>Two</h2><p>The end.</p>"),
    ]
    write_book(tmp_path / "book.epub", chapters, in_toc=[False, True, False, True, False, True])

    job = load_manifest(manifest(tmp_path, BOOK_ENTRY))

    assert [(s.id, s.text) for s in job.scripts[1:]] == [
        ("book/01-one", "One\n\nFirst half.\n\nSecond half."),
        ("book/02-two", "Two\n\nThe end."),
    ]


def test_a_book_without_contents_takes_titles_from_headings(tmp_path: Path) -> None:
    book = write_book(
        tmp_path / "full.epub",
        [("x", "<h1>Arrival</h1><p>We came.</p>"), ("y", "<p>No heading here at all.</p>")],
    )
    nav = entry_named(book, "nav.xhtml")
    ncx = entry_named(book, "toc.ncx")
    empty_nav = (
        b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml" '
        b'xmlns:epub="http://www.idpf.org/2007/ops"><body><nav epub:type="toc"><ol/></nav>'
        b"</body></html>"
    )
    empty_ncx = b'<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/"><navMap/></ncx>'
    rezip(book, tmp_path / "book.epub", replace={nav: empty_nav, ncx: empty_ncx})

    job = load_manifest(manifest(tmp_path, BOOK_ENTRY))

    assert [(s.id, s.title) for s in job.scripts[1:]] == [
        ("book/01-arrival", "Arrival"),
        ("book/02-no-heading-here-at-all", "No heading here at all."),
    ]


def test_the_plan_of_a_book_segments_every_chapter(tmp_path: Path) -> None:
    write_book(tmp_path / "book.epub")

    plan = plan_manifest(manifest(tmp_path, BOOK_ENTRY))

    chapters = [s for s in plan.scripts if s.script_id.startswith("book/")]
    assert len(chapters) == 3
    assert all(s.segments and s.params.speed_alpha is not None for s in chapters)
    assert "".join(seg.source for seg in chapters[2].segments) == (
        "Chapter Three\n\nBy evening the house was warm. Everyone slept well."
    )


def test_a_split_markdown_file_becomes_lessons(tmp_path: Path) -> None:
    (tmp_path / "course.md").write_text("# Lesson one\n\nHello *there*.\n\n# Lesson two\n\nBye.\n")

    job = load_manifest(
        manifest(tmp_path, "  - id: course\n    split: headings\n    text_file: course.md\n")
    )

    assert [(s.id, s.title, s.text) for s in job.scripts[1:]] == [
        ("course/01-lesson-one", "Lesson one", "Lesson one\n\nHello there."),
        ("course/02-lesson-two", "Lesson two", "Lesson two\n\nBye."),
    ]


def _refused(tmp_path: Path, entry: str = BOOK_ENTRY) -> str:
    path = manifest(tmp_path, entry)
    with pytest.raises(ManifestError) as caught:
        plan_manifest(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def _patched(tmp_path: Path, **changes: object) -> None:
    book = write_book(tmp_path / "good.epub")
    rezip(book, tmp_path / "book.epub", **changes)  # type: ignore[arg-type]


def _chapter(tmp_path: Path) -> str:
    return entry_named(write_book(tmp_path / "good.epub"), "chap_02.xhtml")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("not a zip", "'book.epub' is not an EPUB: it is not a zip archive"),
        ("rights", "is protected by DRM (it holds META-INF/rights.xml)"),
        ("encrypted", "is protected by DRM (META-INF/encryption.xml encrypts its content)"),
        ("no container", "is not an EPUB: it has no META-INF/container.xml"),
        ("no opf", "names its package document"),
        ("no spine", "has no spine"),
        ("broken chapter", "has a broken XHTML document 'EPUB/chap_02.xhtml' (line 1:"),
        ("missing chapter", "which it does not hold"),
        ("empty chapter", "has an empty chapter: 'The Letter' ('EPUB/chap_02.xhtml') holds"),
    ],
)
def test_a_bad_epub_gets_one_clear_message(tmp_path: Path, breakage: str, message: str) -> None:
    chapter = _chapter(tmp_path)
    opf = entry_named(tmp_path / "good.epub", "content.opf")
    good_opf = zipfile.ZipFile(tmp_path / "good.epub").read(opf)
    if breakage == "not a zip":
        (tmp_path / "book.epub").write_bytes(b"PK\x03\x04 this is no archive")
    elif breakage == "rights":
        _patched(tmp_path, replace={"META-INF/rights.xml": b"<rights/>"})
    elif breakage == "encrypted":
        encryption = (
            b'<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
            b'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
            b'<enc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>'
            b"</enc:EncryptedData></encryption>"
        )
        _patched(tmp_path, replace={"META-INF/encryption.xml": encryption})
    elif breakage == "no container":
        _patched(tmp_path, drop=["META-INF/container.xml"])
    elif breakage == "no opf":
        _patched(tmp_path, drop=[opf])
    elif breakage == "no spine":
        _patched(tmp_path, replace={opf: re.sub(rb"<spine.*</spine>", b"", good_opf, flags=re.S)})
    elif breakage == "broken chapter":
        _patched(tmp_path, replace={chapter: b"<html><body><p>unclosed</body></html>"})
    elif breakage == "missing chapter":
        _patched(tmp_path, drop=[chapter])
    elif breakage == "empty chapter":
        _patched(tmp_path, replace={chapter: b"<html><body><h1>  </h1><p/></body></html>"})

    refused = _refused(tmp_path)

    assert refused.startswith(f"{tmp_path / 'jobs.yaml'}:6: scripts[1].text_file: 'book.epub' ")
    assert message in refused


def test_font_obfuscation_is_not_drm(tmp_path: Path) -> None:
    encryption = (
        b'<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
        b'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
        b'<enc:EncryptionMethod Algorithm="http://www.idpf.org/2008/embedding"/>'
        b"</enc:EncryptedData></encryption>"
    )
    _patched(tmp_path, replace={"META-INF/encryption.xml": encryption})

    assert len(load_manifest(manifest(tmp_path, BOOK_ENTRY)).scripts) == 4


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    book = write_book(tmp_path / "good.epub")
    chapter = entry_named(book, "chap_01.xhtml")
    bomb = tmp_path / "book.epub"
    with zipfile.ZipFile(book) as old, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            if info.filename != chapter:
                new.writestr(info, old.read(info))
        with new.open(chapter, "w", force_zip64=True) as sink:
            sink.write(b"<html><body><p>")
            zeros = b"0" * (1 << 20)
            for _ in range(MAX_EPUB_READ_BYTES // len(zeros) + 1):
                sink.write(zeros)

    refused = _refused(tmp_path)

    assert f"holds more than {MAX_EPUB_READ_BYTES:,} bytes of text once uncompressed" in refused


def test_a_zip_that_lies_about_its_sizes_is_refused(tmp_path: Path) -> None:
    book = write_book(tmp_path / "good.epub")
    chapter = entry_named(book, "chap_01.xhtml").encode()
    data = bytearray(book.read_bytes())
    # Claim a tiny uncompressed size in the central directory: the inflated data is longer.
    at = data.rfind(b"PK\x01\x02", 0, data.rfind(chapter))
    struct.pack_into("<I", data, at + 24, 10)
    (tmp_path / "book.epub").write_bytes(bytes(data))

    assert "cannot be read: 'EPUB/chap_01.xhtml' is damaged in the archive" in _refused(tmp_path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("  - id: book\n    text_file: book.epub\n    split: headings\n", "remove split"),
        ("  - id: n\n    text: Some words.\n    split: {regex: '^Lesson'}\n", "matches no line"),
        ("  - id: n\n    text: x\n    split: {chapters: 2}\n", "must be headings"),
        ("  - id: book\n    text_file: ../book.epub\n", "outside the manifest's folder"),
    ],
)
def test_a_bad_split_or_book_path_names_its_field(tmp_path: Path, entry: str, message: str) -> None:
    write_book(tmp_path / "book.epub")

    refused = _refused(tmp_path, entry)

    assert re.match(rf"{re.escape(str(tmp_path / 'jobs.yaml'))}:\d+: scripts\[1\]\.", refused)
    assert message in refused


def test_chapters_whose_ids_clash_with_a_script_are_refused(tmp_path: Path) -> None:
    write_book(tmp_path / "book.epub")
    entry = BOOK_ENTRY + "  - id: book/02-the-letter\n    text: Again.\n"

    assert "'book/02-the-letter' is used again (first at line 5)" in _refused(tmp_path, entry)


def test_chapters_count_towards_the_limit_of_scripts(tmp_path: Path) -> None:
    (tmp_path / "many.txt").write_text("Lesson\n" * MAX_SCRIPTS, encoding="utf-8")
    entry = "  - id: many\n    text_file: many.txt\n    split: {regex: '^Lesson'}\n"

    refused = _refused(tmp_path, entry)

    assert f"{tmp_path / 'jobs.yaml'}:5: scripts[1]: brings the job to more than" in refused
