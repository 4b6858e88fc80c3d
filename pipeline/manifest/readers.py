"""Manifest files to plain data, remembering where each value was written.

YAML is composed with PyYAML's SafeLoader (only plain data; `!!python/...` tags fail) and the
node tree is walked once to record the line of every key and list item. CSV rows become script
entries that remember their physical line and 1-based data row.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pipeline.errors import ManifestError
from pipeline.manifest.models import (
    MAX_TEXT_CHARS,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
    Source,
    Voice,
)

if TYPE_CHECKING:
    from pipeline.manifest.source import Folder

Loc = tuple[str | int, ...]

TOP_KEYS = (
    "job",
    "output",
    "keep_releases",
    "notify",
    "defaults",
    "scripts",
    "scripts_csv",
    "lexicon",
    "book",
)
SCRIPT_KEYS = ("id", "text", "text_file", "split", "lexicon", "title")
VOICE_KEYS = tuple(Voice.model_fields)

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class Locator(Protocol):
    """Maps a path inside the manifest's data to a place in the file."""

    def source(self, loc: Loc) -> Source:
        """The nearest known place for `loc`, with the field path it names."""
        ...


@dataclass(frozen=True)
class RawManifest:
    """A manifest's plain data: {job, output, notify, defaults, scripts}, and where each part is.

    `file` names it in errors (a path or an s3:// URI); `folder` holds the files it names."""

    file: Path | str
    data: dict[str, Any]
    locator: Locator
    folder: Folder


def field_path(loc: Loc) -> str | None:
    """`("scripts", 2, "formats", 0)` -> `scripts[2].formats[0]`."""
    text = ""
    for part in loc:
        if isinstance(part, str) and not part.isprintable():
            text += f"[{part!r}]"  # a key with control characters is shown escaped
        elif isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or None


@dataclass(frozen=True)
class YamlLocator:
    """Lines of YAML nodes, keyed by their path."""

    file: Path | str
    lines: dict[Loc, int]

    def source(self, loc: Loc) -> Source:
        """The line of the longest prefix of `loc` that was written in the file."""
        line = next(
            (self.lines[loc[:end]] for end in range(len(loc), -1, -1) if loc[:end] in self.lines),
            None,
        )
        return Source(file=str(self.file), line=line, field=field_path(loc))


@dataclass(frozen=True)
class CsvLocator:
    """Per script (data row), its first physical line and its row number."""

    file: Path | str
    rows: tuple[tuple[int, int], ...]

    def source(self, loc: Loc) -> Source:
        """A script's row names only the column; anything else is the header's."""
        if len(loc) >= 2 and loc[0] == "scripts" and isinstance(loc[1], int):
            line, row = self.rows[loc[1]]
            return Source(file=str(self.file), line=line, row=row, field=field_path(loc[2:]))
        return Source(file=str(self.file), line=1, field=field_path(loc))


def read_yaml(
    file: Path | str, text: str, folder: Folder, *, what: str = "manifest", top: str | None = None
) -> RawManifest:
    """Parse YAML safely; ManifestError with the line for syntax, tags, duplicate keys.

    `what` names the file and `top` what its top-level mapping holds, for a file that is not a
    manifest (a lexicon); `folder` is where the files it names are."""
    try:
        data, lines = _compose(file, text, what, top or f"a mapping with {', '.join(TOP_KEYS)}")
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(file, exc) from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ManifestError(
            f"character {chr(exc.character)!r} is not allowed in YAML", file=file, line=line
        ) from exc
    return RawManifest(file=file, data=data, locator=YamlLocator(file, lines), folder=folder)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting before PyYAML's recursive composer meets it, and
    names the line of a value that cannot be constructed (a 5,000-digit int, a 13th month)."""

    def __init__(self, file: Path | str, text: str) -> None:
        super().__init__(text)
        self.file = file
        self.depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.depth >= MAX_YAML_DEPTH:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _too_deep(self.file, event.start_mark.line + 1)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            raise ManifestError(
                f"the value cannot be read: {exc}", file=self.file, line=node.start_mark.line + 1
            ) from exc


def _too_deep(file: Path | str, line: int) -> ManifestError:
    return ManifestError(
        f"lists and mappings nest more than {MAX_YAML_DEPTH} levels deep (counting what YAML "
        "aliases repeat)",
        file=file,
        line=line,
    )


def _compose(
    file: Path | str, text: str, what: str, top: str
) -> tuple[dict[str, Any], dict[Loc, int]]:
    loader = _Loader(file, text)  # checks for unprintable characters already
    try:
        root = loader.get_single_node()
        if root is None:
            raise ManifestError(f"the {what} is empty", file=file, line=1)
        if not isinstance(root, MappingNode):
            raise ManifestError(
                f"the top level must be {top}, not {_kind(root)}",
                file=file,
                line=root.start_mark.line + 1,
            )
        lines: dict[Loc, int] = {(): root.start_mark.line + 1}
        _index(file, root, lines)
        data: dict[str, Any] = loader.construct_document(root)
        return data, lines
    finally:
        loader.dispose()


def _kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    value = str(node.value)
    return f"a single value ({value if len(value) <= 40 else value[:37] + '...'!r})"


_Steps = Iterator[tuple[Node, Loc]]


def _index(file: Path | str, root: Node, lines: dict[Loc, int]) -> None:
    """Record the line of every key and item; reject duplicate or odd keys.

    The walk follows aliases, so it counts what they expand to and how deep that nests, and
    stops at the limits: a few lines of anchors can stand for billions of values. It keeps its
    own stack instead of recursing, in document order.
    """
    stack: list[_Steps] = [iter([(root, ())])]
    visited = 0
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
            continue
        node, loc = step
        visited += 1
        if visited > MAX_YAML_VALUES:
            raise ManifestError(
                f"the manifest holds more than {MAX_YAML_VALUES:,} values once its YAML "
                "aliases are expanded",
                file=file,
                line=node.start_mark.line + 1,
            )
        if len(stack) > MAX_YAML_DEPTH:
            raise _too_deep(file, node.start_mark.line + 1)
        if isinstance(node, SequenceNode):
            stack.append(_items(node, loc, lines))
        elif isinstance(node, MappingNode):
            stack.append(_entries(file, node, loc, lines))


def _items(node: SequenceNode, loc: Loc, lines: dict[Loc, int]) -> _Steps:
    for i, item in enumerate(node.value):
        lines.setdefault((*loc, i), item.start_mark.line + 1)
        yield item, (*loc, i)


def _entries(file: Path | str, node: MappingNode, loc: Loc, lines: dict[Loc, int]) -> _Steps:
    first_line: dict[str, int] = {}
    merged: list[Node] = []
    for key_node, value in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == _MERGE_TAG:
            merged.extend(value.value if isinstance(value, SequenceNode) else [value])
            continue
        if not isinstance(key_node, ScalarNode) or key_node.tag != _STR_TAG:
            shown = key_node.value if isinstance(key_node, ScalarNode) else "a collection"
            raise ManifestError(
                f"key {shown!r} must be text (put it in quotes)",
                file=file,
                line=line,
                field=field_path(loc),
            )
        key = key_node.value
        if key in first_line:
            raise ManifestError(
                f"key {key!r} appears twice in the same mapping (first on line {first_line[key]})",
                file=file,
                line=line,
                field=field_path((*loc, key)),
            )
        first_line[key] = line
        lines.setdefault((*loc, key), line)
        yield value, (*loc, key)
    # Keys brought in by `<<: *anchor` are located where the anchor wrote them.
    for source in merged:
        yield source, loc


def _yaml_error(file: Path | str, exc: yaml.MarkedYAMLError) -> ManifestError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    problem = exc.problem or "invalid YAML"
    tag = re.search(r"constructor for the tag '([^']*)'", problem)
    if tag is not None:
        shown = tag[1].replace("tag:yaml.org,2002:", "!!")
        return ManifestError(
            f"YAML tag {shown!r} is not allowed: a manifest holds plain data only "
            "(text, numbers, true/false, lists and mappings)",
            file=file,
            line=line,
        )
    context = f" ({exc.context})" if exc.context else ""
    start = exc.context_mark
    if exc.context and start is not None and start.line + 1 != line:
        context = f" ({exc.context} that starts on line {start.line + 1})"
    return ManifestError(f"YAML syntax error: {problem}{context}", file=file, line=line)


def read_csv(file: Path | str, text: str, folder: Folder) -> RawManifest:
    """One script per row; header `id,text` plus optional override columns; `folder` is where
    the files it names are."""
    # Python's default (128 KiB) would refuse a text the manifest allows; the limit is global,
    # and the manifest's own is the one that applies to every CSV read here.
    csv.field_size_limit(MAX_TEXT_CHARS)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ManifestError(
                "the CSV file is empty; expected a header row with id,text", file=file, line=1
            )
        names = _csv_header(file, header)
        scripts: list[dict[str, Any]] = []
        places: list[tuple[int, int]] = []
        end = reader.line_num
        for row, record in enumerate(reader, start=1):
            line, end = end + 1, reader.line_num
            if all(not cell.strip() for cell in record):
                continue  # blank lines, or rows of bare commas a spreadsheet leaves behind
            if len(record) != len(names):
                raise ManifestError(
                    f"the row has {len(record)} cells but the header has {len(names)} columns",
                    file=file,
                    line=line,
                    row=row,
                )
            scripts.append(
                {
                    # Text keeps its spacing; other cells are single values.
                    name: cell if name == "text" else cell.strip()
                    for name, cell in zip(names, record, strict=True)
                    if cell.strip()
                }
            )
            places.append((line, row))
    except csv.Error as exc:
        problem = (
            f"a cell is longer than {MAX_TEXT_CHARS:,} characters, the limit of a text"
            if "field limit" in str(exc)
            else f"CSV syntax error: {exc}"
        )
        raise ManifestError(problem, file=file, line=reader.line_num) from exc
    if not scripts:
        raise ManifestError("the CSV file has a header but no rows", file=file, line=1)
    return RawManifest(
        file=file,
        data={"scripts": scripts},
        locator=CsvLocator(file, tuple(places)),
        folder=folder,
    )


def _csv_header(file: Path | str, header: list[str]) -> list[str]:
    names = [name.strip() for name in header]
    for column, name in enumerate(names, start=1):
        if not name:
            raise ManifestError(f"column {column} of the header has no name", file=file, line=1)
        if names.index(name) != column - 1:
            raise ManifestError(f"column {name!r} appears twice", file=file, line=1, field=name)
        if name not in SCRIPT_KEYS and name not in VOICE_KEYS:
            raise ManifestError(
                unknown_key_message(name, (*SCRIPT_KEYS, *VOICE_KEYS), what="column"),
                file=file,
                line=1,
                field=name,
            )
    for required in ("id", "text"):
        if required not in names:
            raise ManifestError(
                f"the header has no {required!r} column; it must name at least id and text",
                file=file,
                line=1,
            )
    return names


# Names people reach for that this manifest spells differently.
_ALIASES = {
    "speedalpha": "speed",
    "voice": "speaker",
    "model": "modelId",
    "format": "formats",
    "name": "job",
    "destination": "output",
    "webhook": "notify",
    "webhooks": "notify",
}


def unknown_key_message(key: str, known: tuple[str, ...], *, what: str = "key") -> str:
    """`unknown key 'x'`, with a "did you mean" hint when one is close."""
    squash = {k.lower().replace("_", "").replace("-", ""): k for k in known}
    guess = squash.get(key.lower().replace("_", "").replace("-", ""))
    if guess is None and _ALIASES.get(key.lower()) in known:
        guess = _ALIASES[key.lower()]
    if guess is None:
        close = difflib.get_close_matches(key, known, n=1)
        guess = close[0] if close else None
    hint = f" (did you mean {guess!r}?)" if guess else ""
    return f"unknown {what} {key!r}{hint}"
