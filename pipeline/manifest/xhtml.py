"""A book's XHTML document to the text a voice reads: words and the breaks between them.

What is dropped: markup, `script`/`style`/`head`, footnote and endnote bodies (`epub:type`
footnote, endnote, rearnote and their lists, `role="doc-footnote"` and the like, every
`aside`), footnote markers (`epub:type="noteref"`, `role="doc-noteref"`, a `sup` that holds only
a link into a document, a link to a fragment whose text is a short marker such as `1`, `*`,
`[2]`), page-break markers (`epub:type="pagebreak"`, `role="doc-pagebreak"`), ruby readings,
images, SVG and MathML.

What is kept: headings, as lines of their own; `<br>` as a line break; every block (paragraph,
heading, list item, table cell, ...) as a paragraph, a blank line after it, so the segmenter's
paragraph pauses follow the book. Whitespace inside a block collapses to single spaces, soft
hyphens and control characters go, and the characters Rime's markup reads become punctuation
(`pipeline.markup.as_prose`): a book's `[1]` or `a < b` is prose, never markup.

Documents are parsed as XML (as XHTML is) with entities left unexpanded, no DTD and no network;
HTML's named entities (`&nbsp;`), which XHTML books use without declaring, are read as their
characters first. A document that still does not parse is `BrokenDocument`.
"""

from __future__ import annotations

import html.entities
import re
from dataclasses import dataclass

from lxml import etree

from pipeline.markup import as_prose


def words(names: str) -> frozenset[str]:
    """The set of space-separated names in `names`."""
    return frozenset(names.split())


_OPS = "{http://www.idpf.org/2007/ops}"
_TYPE = f"{_OPS}type"

_BLOCKS = words(
    "address article blockquote body caption dd details div dl dt fieldset figcaption figure "
    "footer form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section summary table tbody "
    "td tfoot th thead tr ul"
)
_HEADINGS = words("h1 h2 h3 h4 h5 h6")
_DROPPED = words("aside head script style template rt rp img svg math audio video object embed")
_IMAGES = words("img svg image")
# epub:type and role values of things a listener never hears.
_NOTE_TYPES = words(
    "footnote footnotes endnote endnotes rearnote rearnotes note noteref pagebreak page-list "
    "annoref"
)
_NOTE_ROLES = words("doc-footnote doc-endnote doc-endnotes doc-noteref doc-pagebreak")
# The text of a link that is a note marker: a number, a letter or two, or a symbol, maybe bracketed.
_MARKER = re.compile(r"[\[(]?(?:\d{1,4}|[a-zA-Z]{1,2}|[*†‡§¶#]{1,3}|[ivx]{1,4})[\])]?\.?")
_ENTITY = re.compile(rb"&([A-Za-z][A-Za-z0-9]{1,31});")
_XML_ENTITIES = frozenset({b"amp", b"lt", b"gt", b"quot", b"apos"})
_INVISIBLE = re.compile("[\u00ad\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]")
_SPACES = re.compile(r"[ \t\r\n\f\v]+")

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, recover=False
)


class BrokenDocument(ValueError):
    """An XHTML document that cannot be parsed; the message says where."""


@dataclass(frozen=True)
class Extracted:
    """What a document holds for a listener."""

    text: str  # paragraphs separated by blank lines; "" when it holds no words
    heading: str | None  # its first heading's text
    types: frozenset[str]  # epub:type and role values of its body and the body's first block
    has_image: bool  # an image page (a cover, a plate) has no text and is no empty chapter


def parse_document(data: bytes) -> etree._Element:
    """The root element of an XHTML (XML) document; BrokenDocument when it is not one."""
    try:
        return etree.fromstring(_with_html_entities(data), _PARSER)
    except etree.XMLSyntaxError as exc:
        line = f"line {exc.lineno}: " if exc.lineno else ""
        raise BrokenDocument(f"{line}{exc.msg}") from exc


def extract(data: bytes) -> Extracted:
    """The readable text of an XHTML document, with its first heading and its types."""
    root = parse_document(data)
    body = next((el for el in root.iter() if _name(el) == "body"), root)
    walker = _Walker()
    walker.walk(body)
    first = next((el for el in body if isinstance(el.tag, str) and _name(el) in _BLOCKS), None)
    types = _types(body) | (_types(first) if first is not None else frozenset())
    return Extracted(
        text=walker.text(),
        heading=walker.heading,
        types=types,
        has_image=any(_name(el) in _IMAGES for el in body.iter() if isinstance(el.tag, str)),
    )


def plain(element: etree._Element) -> str:
    """An element's text content on one line (a title in a table of contents)."""
    text = "".join(str(piece) for piece in element.itertext())
    return _SPACES.sub(" ", _INVISIBLE.sub("", text)).strip()


def _with_html_entities(data: bytes) -> bytes:
    # Only UTF-8 (or ASCII) documents: a UTF-16 one is parsed as it is.
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data

    def character(match: re.Match[bytes]) -> bytes:
        name = match.group(1)
        found = html.entities.html5.get(name.decode("ascii") + ";")
        if name in _XML_ENTITIES or found is None:
            return match.group(0)
        return found.encode("utf-8")

    return _ENTITY.sub(character, data)


def _name(element: etree._Element) -> str:
    tag = element.tag
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1].lower()


def _types(element: etree._Element) -> frozenset[str]:
    values = f"{element.get(_TYPE) or ''} {element.get('role') or ''}"
    return frozenset(v.lower() for v in values.split())


def _dropped(element: etree._Element) -> bool:
    name = _name(element)
    if name in _DROPPED:
        return True
    types = _types(element)
    if types & _NOTE_TYPES or types & _NOTE_ROLES:
        return True
    if name == "sup":
        links = [el for el in element.iter() if _name(el) == "a"]
        return (
            bool(links)
            and all("#" in (a.get("href") or "") for a in links)
            and bool(_MARKER.fullmatch(plain(element)))
        )
    if name == "a" and "#" in (element.get("href") or ""):
        return bool(_MARKER.fullmatch(plain(element)))
    return False


class _Walker:
    """Collects text in document order, with breaks: 1 a line, 2 a paragraph."""

    def __init__(self) -> None:
        self.pieces: list[str | int] = []
        self.heading: str | None = None

    def walk(self, element: etree._Element) -> None:
        # XML nesting is bounded by the parser (256 levels without huge_tree), so recursion is.
        name = _name(element)
        block = name in _BLOCKS
        if block:
            self.pieces.append(2)
        if name == "br":
            self.pieces.append(1)
        start = len(self.pieces)
        if element.text and isinstance(element.tag, str):
            text = element.text
            self.pieces.append(text.replace("\n", "\x00") if name == "pre" else text)
        for child in element:
            if not isinstance(child.tag, str) or _dropped(child):
                pass  # comments, processing instructions, entities, and what is never heard
            else:
                self.walk(child)
            if child.tail:
                self.pieces.append(child.tail)
        if name in _HEADINGS and self.heading is None:
            words = _clean("".join(p for p in self.pieces[start:] if isinstance(p, str)))
            self.heading = words or None
        if block:
            self.pieces.append(2)

    def text(self) -> str:
        paragraphs: list[str] = []
        lines: list[str] = []
        line: list[str] = []

        def end_line() -> None:
            words = _clean("".join(line))
            if words:
                lines.append(words)
            line.clear()

        def end_paragraph() -> None:
            end_line()
            if lines:
                paragraphs.append("\n".join(lines))
            lines.clear()

        for piece in self.pieces:
            if piece == 2:
                end_paragraph()
            elif piece == 1:
                end_line()
            else:
                for i, part in enumerate(str(piece).split("\x00")):
                    if i:
                        end_line()  # a line of preformatted text
                    line.append(part)
        end_paragraph()
        return "\n\n".join(paragraphs)


def _clean(text: str) -> str:
    return as_prose(_SPACES.sub(" ", _INVISIBLE.sub("", text)).strip())
