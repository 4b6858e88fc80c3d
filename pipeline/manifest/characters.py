"""What a manifest's values may be made of: plain data, and no character Rime cannot take.

Plain data is text, numbers, true/false, lists and mappings: YAML's dates, binary and sets mean
nothing here. No value may hold a control character (C0, DEL, C1) or a lone surrogate (YAML's
`"\\ud800"` makes one; it cannot be encoded, so it would fail the request, a database row or the
output's metadata); a script's text may hold tabs and line breaks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from typing import Any

from pipeline.manifest.models import TEXT_CONTROLS
from pipeline.manifest.readers import Loc

_CONTROLS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))]  # C0, DEL and C1
_SURROGATES = "\ud800-\udfff"


def _class(chars: list[str]) -> re.Pattern[str]:
    return re.compile("[" + "".join(map(re.escape, chars)) + _SURROGATES + "]")


_ANY_BAD = _class(_CONTROLS)
_TEXT_BAD = _class([c for c in _CONTROLS if c not in TEXT_CONTROLS])
_PLAIN = (str, int, float, bool, type(None), list, dict)
_NOT_PLAIN = {date: "a date", bytes: "binary data", set: "a set", tuple: "a pair list"}


def character_problem(value: str, *, text: bool) -> tuple[int, str] | None:
    """The first character `value` must not hold: (its 0-based offset, what it is), or None."""
    found = (_TEXT_BAD if text else _ANY_BAD).search(value)
    if found is None:
        return None
    code = ord(found.group())
    if 0xD800 <= code <= 0xDFFF:
        what = f"a lone surrogate (U+{code:04X}), half of a character that cannot stand alone"
    else:
        what = f"a control character (U+{code:04X})"
    return found.start(), what


def where_in(value: str, offset: int) -> str:
    """`line L, column C` of an offset in a multi-line value."""
    before = value[:offset]
    return f"line {before.count(chr(10)) + 1}, column {offset - (before.rfind(chr(10)) + 1) + 1}"


def is_text_field(loc: Loc) -> bool:
    """Whether `loc` is a script's `text`, the one value that may hold tabs and line breaks."""
    return len(loc) == 3 and loc[0] == "scripts" and loc[2] == "text"


def first_bad_value(data: Any) -> tuple[Loc, str] | None:
    """The first value (in document order) that is not plain data or holds a bad character."""
    for loc, value in _walk(data):
        if not isinstance(value, _PLAIN):
            kind = next((name for t, name in _NOT_PLAIN.items() if isinstance(value, t)), None)
            return loc, (
                f"must be text, a number, true/false, a list or a mapping, not "
                f"{kind or type(value).__name__}; put it in quotes if it is text"
            )
        if isinstance(value, str):
            problem = character_problem(value, text=is_text_field(loc))
            if problem is not None:
                offset, what = problem
                at = f" at {where_in(value, offset)}" if "\n" in value else ""
                return loc, f"contains {what}{at}; remove it"
    return None


def _walk(data: Any) -> Iterator[tuple[Loc, Any]]:
    """Every value and mapping key under `data` with its path, without recursion."""
    stack: list[tuple[Loc, Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        yield loc, value
        if isinstance(value, dict):
            children: list[tuple[Loc, Any]] = []
            for key, item in value.items():
                if isinstance(key, str):
                    # A key is reported at its own place, as the key it is.
                    yield (*loc, key), key
                children.append(((*loc, key), item))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(reversed([((*loc, i), item) for i, item in enumerate(value)]))
