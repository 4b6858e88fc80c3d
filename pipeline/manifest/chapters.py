"""One long text into chapters, and the ids and titles chapters get as scripts.

A script entry's `split:` cuts its text (inline or from a text file) into one script per chapter:

    split: headings            # Markdown: at each top-level heading of the file's top level
    split: {headings: 2}       # Markdown: at each top-level `#` and `##` heading
    split: {regex: "^Lesson [0-9]+"}   # plain text: at each line the regex finds a match in

Markdown is read with CommonMark's rules (markdown-it), so a `#` inside a code fence, a list or
a quote starts no chapter. `headings` alone cuts at the highest level the file uses: a file of
`#` chapters cuts at `#`, one with a single `#` title over `##` lessons needs `{headings: 2}`.
Each chapter is plain text: its heading as its first line, emphasis, links (their text stays),
images, HTML and code (fenced or indented: code is not narrated) stripped; paragraphs, list
items, table rows and headings become paragraphs. Rime's markup written in the prose (`<300>`,
`[word]`, `{phonemes}`) stays, as in any script.

With a regex, the text is plain: the matching line is the chapter's title and first line. A
regex is held to `MAX_SPLIT_PATTERN_CHARS` and to `SPLIT_SECONDS` of matching in all (the
`regex` module's timeout): a pattern that backtracks without end is refused, not run for ever.

Text before the first cut, when it holds words, is a chapter of its own, titled with its first
line. A split that finds no cut is an error, not one chapter: the file is not what the entry
says it is.

Ids: `<id>/<nn>-<slug>`, nn counting from 01 and zero-padded to the width the count needs (at
least 2); the slug is the title in lowercase ASCII letters and digits joined by hyphens
(accents dropped; `chapter` when nothing is left), cut so the id stays within `MAX_ID_CHARS`.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import regex
from markdown_it import MarkdownIt
from markdown_it.token import Token

from pipeline.manifest.models import (
    MAX_ID_CHARS,
    MAX_SPLIT_PATTERN_CHARS,
    MAX_TITLE_CHARS,
    SPLIT_SECONDS,
)

_MAX_HEADING = 6


@dataclass(frozen=True)
class Chapter:
    """One chapter of a longer text, before it becomes a script."""

    title: str
    text: str
    origin: str  # where it is in its file, for messages: "OEBPS/ch1.xhtml", "line 12"


@dataclass(frozen=True)
class Split:
    """How an entry's text is cut: at Markdown headings down to `level`, or at `pattern`."""

    level: int | None = None  # None with no pattern: the file's own top heading level
    pattern: str | None = None


class SplitProblem(ValueError):
    """A `split:` value, or a text it cannot cut; the message says why."""


def parse_split(value: Any) -> Split:
    """The `split:` of a script entry; SplitProblem naming what is accepted."""
    usage = 'must be headings, {headings: 1-6} or {regex: "..."}'
    if value == "headings":
        return Split()
    if not isinstance(value, dict) or len(value) != 1:
        raise SplitProblem(usage)
    ((key, item),) = value.items()
    if key == "headings":
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= _MAX_HEADING:
            raise SplitProblem(f"headings must be a heading level from 1 to {_MAX_HEADING}")
        return Split(level=item)
    if key != "regex":
        raise SplitProblem(usage)
    if not isinstance(item, str) or not item.strip():
        raise SplitProblem("regex must be a non-empty text")
    if len(item) > MAX_SPLIT_PATTERN_CHARS:
        raise SplitProblem(f"regex is longer than {MAX_SPLIT_PATTERN_CHARS} characters")
    try:
        regex.compile(item)
    except regex.error as exc:
        raise SplitProblem(f"regex {item!r} is not a valid regular expression: {exc}") from exc
    return Split(pattern=item)


def split_text(text: str, split: Split) -> tuple[Chapter, ...]:
    """The chapters of `text` (newlines normalized) cut as `split` says."""
    if split.pattern is not None:
        return _at_lines(text, split.pattern)
    return _at_headings(text, split.level)


def first_line(text: str) -> str:
    """A text's first non-blank line, cut at a word to fit a title."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return title_of(line)


def title_of(text: str) -> str:
    """`text` on one line, at most `MAX_TITLE_CHARS` long (cut at a word, with an ellipsis)."""
    text = " ".join(text.split())
    if len(text) <= MAX_TITLE_CHARS:
        return text
    cut = text[: MAX_TITLE_CHARS - 1].rsplit(" ", 1)[0]
    return cut + "…"


def slug(title: str) -> str:
    """`title` as lowercase ASCII words joined by hyphens; `chapter` when nothing is left."""
    ascii_only = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_only.lower()).strip("-") or "chapter"


def chapter_ids(entry_id: str, chapters: Sequence[Chapter]) -> list[str]:
    """`<entry_id>/<nn>-<slug>` for each chapter, within `MAX_ID_CHARS`."""
    width = max(2, len(str(len(chapters))))
    ids = []
    for number, chapter in enumerate(chapters, start=1):
        head = f"{entry_id}/{number:0{width}d}-"
        room = max(MAX_ID_CHARS - len(head), 1)
        ids.append(head + (slug(chapter.title)[:room].rstrip("-") or "chapter"[:room]))
    return ids


def _at_lines(text: str, pattern: str) -> tuple[Chapter, ...]:
    compiled = regex.compile(pattern)
    lines = text.split("\n")
    deadline = time.monotonic() + SPLIT_SECONDS
    starts = []
    for number, line in enumerate(lines):
        try:
            found = compiled.search(line, timeout=max(deadline - time.monotonic(), 0.001))
        except TimeoutError as exc:
            raise SplitProblem(
                f"regex {pattern!r} takes more than {SPLIT_SECONDS:g} s to match (by line "
                f"{number + 1}); simplify it"
            ) from exc
        if found is not None:
            starts.append(number)
    if not starts:
        raise SplitProblem(f"regex {pattern!r} matches no line, so it starts no chapter")
    chapters = _preamble("\n".join(lines[: starts[0]]))
    for start, end in zip(starts, [*starts[1:], len(lines)], strict=True):
        body = "\n".join(lines[start:end]).strip()
        chapters.append(Chapter(title_of(lines[start]), body, f"line {start + 1}"))
    return tuple(chapters)


def _preamble(text: str) -> list[Chapter]:
    text = text.strip()
    return [Chapter(first_line(text), text, "line 1")] if text else []


_MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n.*?\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)


def _at_headings(text: str, level: int | None) -> tuple[Chapter, ...]:
    # YAML front matter (`---` ... `---` first in the file) is metadata, never read aloud.
    front = _FRONT_MATTER.match(text)
    skipped = text[: front.end()].count("\n") if front else 0
    tokens = _MARKDOWN.parse(text[front.end() :] if front else text)
    headings = [
        i for i, t in enumerate(tokens) if t.type == "heading_open" and t.level == 0 and t.map
    ]
    if level is None and headings:
        level = min(int(tokens[i].tag[1]) for i in headings)
    starts = [i for i in headings if level is not None and int(tokens[i].tag[1]) <= level]
    if not starts:
        what = "Markdown heading (# Title)" if level is None else f"heading of level 1 to {level}"
        raise SplitProblem(f"the text has no {what} outside lists, quotes and code")
    chapters = _preamble(_plain(tokens[: starts[0]]))
    for start, end in zip(starts, [*starts[1:], len(tokens)], strict=True):
        title = _inline(tokens[start + 1].children or [])
        line = (tokens[start].map or [0])[0] + skipped + 1
        chapters.append(Chapter(title_of(title), _plain(tokens[start:end]), f"line {line}"))
    return tuple(chapters)


def _plain(tokens: Sequence[Token]) -> str:
    """Markdown's block tokens as plain paragraphs; code and HTML are left out."""
    paragraphs: list[str] = []
    row: list[str] = []
    before = ""
    for token in tokens:
        if token.type == "inline":
            words = _inline(token.children or [])
            if before in ("th_open", "td_open"):
                row.append(words)
            elif words:
                paragraphs.append(words)
        elif token.type == "tr_close":
            if any(row):
                paragraphs.append(", ".join(cell for cell in row if cell))
            row = []
        before = token.type
    return "\n\n".join(paragraphs)


def _inline(children: Sequence[Token]) -> str:
    words = []
    for child in children:
        if child.type in ("text", "code_inline"):
            words.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            words.append("\n")
    return "\n".join(line.strip() for line in "".join(words).split("\n")).strip()
