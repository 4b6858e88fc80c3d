"""`lexicon:` in a manifest, job-wide or a script's own, to a checked `pipeline.lexicon.Lexicon`.

    lexicon:                      # inline: word -> alias text, or -> "{phonemes}"
      Rime: "{r1Ym}"              # phonemes in quotes: YAML reads bare {...} as a mapping
      SQL: sequel
    lexicon: names.yaml           # or a file, relative to the manifest, never outside its folder
    lexicon: [brands.csv, {Okafor: oh KAH for}]   # or a list of files and mappings, in order

A YAML file is one mapping of word to replacement; a CSV file has the header `word,replacement`.
A script's own `lexicon:` adds to the job's, and its entry for a key replaces the job's. Each
problem names the file, line (and CSV row) and the entry.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from pipeline.errors import ManifestError
from pipeline.lexicon import MAX_LEXICON_FILE_BYTES, Entry, Lexicon, LexiconProblem, entry
from pipeline.manifest.characters import first_bad_value
from pipeline.manifest.models import Source
from pipeline.manifest.paths import PathProblem, read_text_file
from pipeline.manifest.readers import Loc, RawManifest, read_yaml

KEY = "lexicon"
CSV_HEADER = ("word", "replacement")
_SUFFIXES = (".yaml", ".yml", ".csv")


def read_lexicon(raw: RawManifest, value: Any, loc: Loc) -> Lexicon:
    """The lexicon `value` (written at `loc` of the manifest) gives; ManifestError if bad."""
    where = raw.locator.source(loc)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise where.error("must be a mapping of word: replacement, a file, or a list of them")
    located: list[tuple[Entry, Source]] = []
    for index, item in enumerate(items):
        item_loc = (*loc, index) if isinstance(value, list) else loc
        if isinstance(item, dict):
            located.extend(_inline(raw, item, item_loc))
        elif isinstance(item, str):
            located.extend(_file(raw, item, raw.locator.source(item_loc)))
        else:
            raise raw.locator.source(item_loc).error(
                "must be a mapping of word: replacement, or a .yaml or .csv file"
            )
    try:
        return Lexicon(tuple(e for e, _ in located))
    except LexiconProblem as exc:
        blamed = located[exc.index][1] if exc.index is not None else where
        raise blamed.error(str(exc)) from exc


def _inline(raw: RawManifest, mapping: dict[str, Any], loc: Loc) -> list[tuple[Entry, Source]]:
    return [_entry(key, value, raw.locator.source((*loc, key))) for key, value in mapping.items()]


def _entry(key: str, value: Any, where: Source) -> tuple[Entry, Source]:
    if isinstance(value, dict) and len(value) == 1 and next(iter(value.values())) is None:
        # `Rime: {r1Ym}` unquoted is a YAML mapping {r1Ym: null}.
        written = next(iter(value))
        raise where.error(
            f'YAML reads {{{written}}} as a mapping: put phonemes in quotes, "{{{written}}}"'
        )
    if not isinstance(value, str):
        raise where.error("must be text: an alias, or phonemes in curly brackets like {k1Ast0xm}")
    try:
        return entry(key, value, str(where)), where
    except LexiconProblem as exc:
        raise where.error(str(exc)) from exc


def _file(raw: RawManifest, relative: str, where: Source) -> list[tuple[Entry, Source]]:
    suffix = Path(relative).suffix.lower()
    if suffix not in _SUFFIXES:
        raise where.error("a lexicon file is .yaml, .yml or .csv, relative to the manifest")
    try:
        text = read_text_file(relative, raw.folder, limit=MAX_LEXICON_FILE_BYTES, what="a lexicon")
    except PathProblem as exc:
        raise where.error(str(exc)) from exc
    file = raw.folder.name_of(relative)
    if suffix == ".csv":
        return _csv(file, text)
    lexicon = read_yaml(
        file, text, raw.folder, what="lexicon", top="a mapping of word: replacement"
    )
    bad = first_bad_value(lexicon.data)
    if bad is not None:
        raise lexicon.locator.source(bad[0]).error(bad[1])
    return _inline(lexicon, lexicon.data, ())


def _csv(file: str, text: str) -> list[tuple[Entry, Source]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    located: list[tuple[Entry, Source]] = []
    try:
        header = next(reader, None)
        if header is None or tuple(cell.strip() for cell in header) != CSV_HEADER:
            raise ManifestError(
                f"a lexicon CSV starts with the header {','.join(CSV_HEADER)}", file=file, line=1
            )
        end = reader.line_num
        for row, record in enumerate(reader, start=1):
            line, end = end + 1, reader.line_num
            if all(not cell.strip() for cell in record):
                continue
            where = Source(file=str(file), line=line, row=row, field=record[0].strip() or None)
            if len(record) != len(CSV_HEADER):
                raise where.error(
                    f"the row has {len(record)} cells; a lexicon row is word,replacement "
                    "(quote a replacement that holds a comma)"
                )
            bad = first_bad_value(record)
            if bad is not None:
                raise where.error(bad[1])
            located.append(_entry(record[0], record[1], where))
    except csv.Error as exc:
        raise ManifestError(f"CSV syntax error: {exc}", file=file, line=reader.line_num) from exc
    return located
