"""An EPUB (2 or 3) to its chapters, in spine order, titled from its table of contents.

Only what the chapters need is read: the container, the package document (OPF), the table of
contents (the EPUB 3 nav document, else the EPUB 2 NCX) and the spine's XHTML documents; images
and fonts stay compressed. Each entry's uncompressed size is checked before it is read, and all
of them together are held to `MAX_EPUB_READ_BYTES` (Python's zip reader never returns more than
an entry declares, so a zip bomb is refused, not inflated).

Which spine items are chapters:
- skipped: items marked `linear="no"`, the nav document, items that are not XHTML, and items a
  book marks as a cover, title page, copyright page, table of contents, index, colophon or list
  of illustrations (`epub:type` or `role` on the body or its first block, the EPUB 3 landmarks,
  the EPUB 2 guide); also items with no words (an image page, a blank separator);
- when the table of contents names spine items, each item it names starts a chapter, titled with
  the first entry naming it; an item it does not name continues the chapter before it (a chapter
  split over files), and items before the first named one are front matter the book's own
  contents leave out (title pages, dedications), skipped;
- when it names none (or there is none), every item with words is a chapter;
- a title falls back to the item's first heading, then to its first line.
An item the contents name that holds nothing at all (no words, no image) is an empty chapter:
`EpubProblem`, as a book whose text went missing.

`EpubProblem` says what is wrong in words: not a zip, DRM (`META-INF/rights.xml`, or an
`encryption.xml` that encrypts more than fonts), no container or package document, no spine,
a missing or broken document, an empty chapter, too large.
"""

from __future__ import annotations

import posixpath
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote

from lxml import etree

from pipeline.manifest.chapters import Chapter, first_line
from pipeline.manifest.models import MAX_EPUB_ENTRIES, MAX_EPUB_READ_BYTES
from pipeline.manifest.xhtml import (
    BrokenDocument,
    Extracted,
    extract,
    parse_document,
    plain,
    words,
)

_OPF = "{http://www.idpf.org/2007/opf}"
_NCX = "{http://www.daisy.org/z3986/2005/ncx/}"
_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_ENC = "{http://www.w3.org/2001/04/xmlenc#}"
_OPS_TYPE = "{http://www.idpf.org/2007/ops}type"
_XHTML_TYPES = frozenset({"application/xhtml+xml", "text/html", "application/xml"})
# Font obfuscation (IDPF's and Adobe's) is not DRM: the text is readable.
_FONT_MANGLING = frozenset({"http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC"})
# EPUB 3 structural semantics and EPUB 2 guide types of pages a listener does not want read.
_NOT_CHAPTERS = words(
    "cover doc-cover titlepage title-page halftitlepage copyright-page toc doc-toc landmarks "
    "loi lot loa lov index doc-index colophon doc-colophon imprint imprimatur seriespage "
    "page-list"
)


class EpubProblem(ValueError):
    """An EPUB that cannot be read as a book; the message says why, in words."""


@dataclass(frozen=True)
class _Item:
    path: str  # inside the zip
    media_type: str
    properties: frozenset[str]


def read_chapters(path: Path | IO[bytes]) -> tuple[Chapter, ...]:
    """The chapters of the EPUB at `path` (or in a seekable file), in spine order; EpubProblem
    when it has none."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise EpubProblem("is not an EPUB: it is not a zip archive") from exc
    with archive:
        return _Book(archive).chapters()


class _Book:
    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        infos = archive.infolist()
        if len(infos) > MAX_EPUB_ENTRIES:
            raise EpubProblem(f"holds {len(infos):,} files; an EPUB may hold {MAX_EPUB_ENTRIES:,}")
        self.entries = {info.filename: info for info in infos}
        self.read_bytes = 0

    def read(self, name: str, what: str) -> bytes:
        info = self.entries.get(name)
        if info is None:
            raise EpubProblem(f"names {what} {name!r}, which it does not hold")
        if info.flag_bits & 0x1:
            raise EpubProblem(f"is encrypted ({name!r} needs a password); it cannot be read")
        self.read_bytes += info.file_size
        if self.read_bytes > MAX_EPUB_READ_BYTES:
            raise EpubProblem(
                f"holds more than {MAX_EPUB_READ_BYTES:,} bytes of text once uncompressed"
            )
        try:
            return self.archive.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError) as exc:
            raise EpubProblem(
                f"cannot be read: {name!r} is damaged in the archive ({exc})"
            ) from exc

    def xml(self, name: str, what: str) -> etree._Element:
        try:
            return parse_document(self.read(name, what))
        except BrokenDocument as exc:
            raise EpubProblem(f"has broken XML in {what} {name!r} ({exc})") from exc

    def chapters(self) -> tuple[Chapter, ...]:
        self._refuse_drm()
        opf_path = self._package_path()
        opf = self.xml(opf_path, "its package document")
        base = posixpath.dirname(opf_path)
        items = self._manifest(opf, base)
        spine = opf.find(f"{_OPF}spine")
        if spine is None:
            raise EpubProblem(f"has no spine in {opf_path!r}: it names no chapters")
        order: list[_Item] = []
        for ref in spine.iter(f"{_OPF}itemref"):
            item = items.get(ref.get("idref") or "")
            if item is None:
                raise EpubProblem(
                    f"names {ref.get('idref')!r} in its spine, which its manifest lacks"
                )
            if (ref.get("linear") or "yes").strip().lower() != "no":
                order.append(item)
        if not order:
            raise EpubProblem(f"has an empty spine in {opf_path!r}: it names no chapters")
        nav = next((i for i in items.values() if "nav" in i.properties), None)
        toc, skipped = self._nav(nav) if nav is not None else ([], set())
        if not toc:
            ncx = items.get(spine.get("toc") or "") or next(
                (i for i in items.values() if i.media_type == "application/x-dtbncx+xml"), None
            )
            toc = self._ncx(ncx) if ncx is not None else []
        skipped |= self._guide(opf, base)
        titles: dict[str, str] = {}
        for target, title in toc:
            titles.setdefault(target, title)
        return self._assemble(order, nav, titles, skipped)

    def _assemble(
        self, order: list[_Item], nav: _Item | None, titles: dict[str, str], skipped: set[str]
    ) -> tuple[Chapter, ...]:
        named = any(item.path in titles for item in order)
        chapters: list[Chapter] = []
        for item in order:
            if item is nav or item.media_type not in _XHTML_TYPES or item.path in skipped:
                continue
            try:
                found = extract(self.read(item.path, "a chapter"))
            except BrokenDocument as exc:
                raise EpubProblem(f"has a broken XHTML document {item.path!r} ({exc})") from exc
            if found.types & _NOT_CHAPTERS:
                continue
            listed = item.path in titles
            if not found.text:
                if listed and not found.has_image:
                    raise EpubProblem(
                        f"has an empty chapter: {titles[item.path]!r} ({item.path!r}) holds no text"
                    )
                continue
            if named and not listed:
                if chapters:  # the rest of the chapter before, in a file of its own
                    last = chapters[-1]
                    chapters[-1] = Chapter(last.title, f"{last.text}\n\n{found.text}", last.origin)
                continue
            chapters.append(Chapter(_title(titles.get(item.path), found), found.text, item.path))
        if not chapters:
            raise EpubProblem("holds no chapter with text")
        return tuple(chapters)

    def _refuse_drm(self) -> None:
        if "META-INF/rights.xml" in self.entries:
            raise EpubProblem(
                "is protected by DRM (it holds META-INF/rights.xml); only DRM-free EPUBs can "
                "be read"
            )
        if "META-INF/encryption.xml" not in self.entries:
            return
        root = self.xml("META-INF/encryption.xml", "its encryption list")
        for method in root.iter(f"{_ENC}EncryptionMethod"):
            if method.get("Algorithm") not in _FONT_MANGLING:
                raise EpubProblem(
                    "is protected by DRM (META-INF/encryption.xml encrypts its content); only "
                    "DRM-free EPUBs can be read"
                )

    def _package_path(self) -> str:
        if "META-INF/container.xml" not in self.entries:
            raise EpubProblem("is not an EPUB: it has no META-INF/container.xml")
        container = self.xml("META-INF/container.xml", "its container")
        for rootfile in container.iter(f"{_CONTAINER}rootfile"):
            full_path = rootfile.get("full-path")
            if full_path and rootfile.get("media-type") == "application/oebps-package+xml":
                return full_path
        raise EpubProblem("has no package document (OPF): META-INF/container.xml names none")

    def _manifest(self, opf: etree._Element, base: str) -> dict[str, _Item]:
        manifest = opf.find(f"{_OPF}manifest")
        if manifest is None:
            raise EpubProblem("has no manifest in its package document")
        return {
            item.get("id") or "": _Item(
                path=_join(base, item.get("href") or ""),
                media_type=(item.get("media-type") or "").strip().lower(),
                properties=frozenset((item.get("properties") or "").split()),
            )
            for item in manifest.iter(f"{_OPF}item")
        }

    def _nav(self, nav: _Item) -> tuple[list[tuple[str, str]], set[str]]:
        """The nav document's table of contents, and the targets its landmarks skip."""
        root = self.xml(nav.path, "its table of contents")
        base = posixpath.dirname(nav.path)
        toc: list[tuple[str, str]] = []
        skipped: set[str] = set()
        for element in root.iter("{*}nav"):
            kinds = (element.get(_OPS_TYPE) or "").split()
            for link in element.iter("{*}a"):
                href = link.get("href")
                if not href:
                    continue
                if "toc" in kinds:
                    toc.append((_join(base, href), plain(link)))
                elif "landmarks" in kinds and set((link.get(_OPS_TYPE) or "").split()) & (
                    _NOT_CHAPTERS
                ):
                    skipped.add(_join(base, href))
        return toc, skipped

    def _ncx(self, ncx: _Item) -> list[tuple[str, str]]:
        root = self.xml(ncx.path, "its table of contents")
        base = posixpath.dirname(ncx.path)
        found = []
        for point in root.iter(f"{_NCX}navPoint"):
            content = point.find(f"{_NCX}content")
            label = point.find(f"{_NCX}navLabel")
            if content is not None and content.get("src"):
                title = plain(label) if label is not None else ""
                found.append((_join(base, content.get("src") or ""), title))
        return found

    def _guide(self, opf: etree._Element, base: str) -> set[str]:
        return {
            _join(base, ref.get("href") or "")
            for ref in opf.iter(f"{_OPF}reference")
            if (ref.get("type") or "").strip().lower() in _NOT_CHAPTERS
        }


def _join(base: str, href: str) -> str:
    """A reference's path inside the zip: relative to `base`, without its fragment."""
    target = unquote(href.split("#", 1)[0])
    return posixpath.normpath(posixpath.join(base, target)) if target else ""


def _title(listed: str | None, found: Extracted) -> str:
    return (listed or "").strip() or found.heading or first_line(found.text)
