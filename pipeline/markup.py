"""Rime's inline markup: `<200>` pauses, `{h'El.o}` phonemes, `[slow]` inline-speed words.

`parse` splits a text into plain runs and markup elements, each with its (start, end) span, so
the segmenter never cuts inside markup and can hand each request its share of `inlineSpeedAlpha`.

Strictness: Rime's pause markup is `<digits>` and nothing else, so any other `<` or `>` (also a
lone one in prose, as in "a < b") is a MarkupError naming its position. Passing it through would
send Rime something it reads as broken markup; one clear message is safer. Prose can say "less
than". Markup cannot nest, and `[]`, `{}` and `<>` must not be empty (whitespace counts as empty).

Text that is not a script (a book's prose, `as_prose`) holds these characters as punctuation:
brackets become parentheses and angle brackets single guillemets, so nothing in it reads as
markup and what is left is still punctuation to a voice.

A pause is at most `MAX_PAUSE_MS`, the same limit as the manifest's `pause_ms`: an unbounded
`<99999999999>` would be hours of silence on disk, or a request Rime cannot finish.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from pipeline.errors import MarkupError


@dataclass(frozen=True)
class Text:
    """A run of plain text between markup elements."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Pause:
    """`<ms>`: silence of `ms` milliseconds (honoured with `pauseBetweenBrackets`)."""

    start: int
    end: int
    ms: int


@dataclass(frozen=True)
class Phonemes:
    """`{phonemes}`: the pronunciation of one word (honoured with `phonemizeBetweenBrackets`)."""

    start: int
    end: int
    phonemes: str


@dataclass(frozen=True)
class SpeedWord:
    """`[word]`: a word spoken at the next speed of the request's `inlineSpeedAlpha` list."""

    start: int
    end: int
    word: str


Token: TypeAlias = Text | Pause | Phonemes | SpeedWord

# The longest pause one place in a script may hold, from markup or from the manifest's settings.
MAX_PAUSE_MS = 60_000

_SPECIAL = re.compile(r"[<>{}\[\]]")
_PAUSE = re.compile(r"<([0-9]+)>")  # ASCII digits: Rime reads no others
_CLOSERS = {"{": "}", "[": "]"}
_OPENERS = {"}": "{", "]": "["}
_PREVIEW = 20
# What each character markup reads becomes in prose: the same shape of punctuation, never markup.
_PROSE = str.maketrans({"[": "(", "]": ")", "{": "(", "}": ")", "<": "\u2039", ">": "\u203a"})


def as_prose(text: str) -> str:
    """`text` with every character markup reads replaced by punctuation that is not markup."""
    return text.translate(_PROSE)


def parse(text: str) -> tuple[Token, ...]:
    """Split `text` into plain runs and markup elements; malformed markup raises MarkupError."""
    tokens: list[Token] = []
    pos = 0  # end of the last markup element
    while (found := _SPECIAL.search(text, pos)) is not None:
        at = found.start()
        char = text[at]
        token: Token
        if char == "<":
            pause = _PAUSE.match(text, at)
            if pause is None:
                raise MarkupError(_bad_pause(text, at), at)
            token = Pause(at, pause.end(), _pause_ms(pause.group(1), at))
        elif char in _CLOSERS:
            token = _bracketed(text, at)
        elif char == ">":
            raise MarkupError(
                "stray '>': pause markup is <milliseconds>, like <200>; "
                "write 'greater than' in prose",
                at,
            )
        else:
            raise MarkupError(f"{char!r} without an opening {_OPENERS[char]!r}", at)
        if at > pos:
            tokens.append(Text(pos, at, text[pos:at]))
        tokens.append(token)
        pos = token.end
    if pos < len(text):
        tokens.append(Text(pos, len(text), text[pos:]))
    return tuple(tokens)


def speed_words(tokens: Sequence[Token]) -> tuple[SpeedWord, ...]:
    """The `[word]` elements of a parsed text, in order."""
    return tuple(t for t in tokens if isinstance(t, SpeedWord))


def check_inline_speed(tokens: Sequence[Token], values: Sequence[float], length: int) -> None:
    """Raise MarkupError unless there is exactly one `inlineSpeedAlpha` value per `[word]`."""
    words = speed_words(tokens)
    if len(words) == len(values):
        return
    message = (
        f"the text has {len(words)} bracketed [word]s but inlineSpeedAlpha has "
        f"{len(values)} value{'s' if len(values) != 1 else ''}; they must match one to one"
    )
    # Point at the first word without a value, or at the end when values are left over.
    position = words[len(values)].start if len(words) > len(values) else length
    raise MarkupError(message, position)


def _pause_ms(digits: str, at: int) -> int:
    # Compare the digits before converting them: a 5,000-digit number is too big to be an int.
    value = digits.lstrip("0") or "0"
    if len(value) > len(str(MAX_PAUSE_MS)) or int(value) > MAX_PAUSE_MS:
        shown = digits if len(digits) <= _PREVIEW else digits[:_PREVIEW] + "..."
        raise MarkupError(
            f"pause <{shown}> is longer than the limit of {MAX_PAUSE_MS} milliseconds", at
        )
    return int(value)


def _bracketed(text: str, at: int) -> Phonemes | SpeedWord:
    opener = text[at]
    closer = _CLOSERS[opener]
    inner = _SPECIAL.search(text, at + 1)
    if inner is None:
        raise MarkupError(f"{opener!r} is not closed with {closer!r}", at)
    where = inner.start()
    found = text[where]
    if found != closer:
        if found in "<{[":
            raise MarkupError(
                f"nested markup: {found!r} inside {opener}...{closer} opened at character "
                f"{at} (markup cannot nest; is a {closer!r} missing?)",
                where,
            )
        raise MarkupError(
            f"{found!r} inside {opener}...{closer} opened at character {at}; expected {closer!r}",
            where,
        )
    content = text[at + 1 : where]
    if not content.strip():
        raise MarkupError(f"empty {opener}{closer}", at)
    if opener == "{":
        return Phonemes(at, where + 1, content)
    return SpeedWord(at, where + 1, content)


def _bad_pause(text: str, at: int) -> str:
    close = text.find(">", at + 1)
    if close == at + 1:
        return "empty pause marker '<>'; write milliseconds, like <200>"
    if close == -1 or close - at > _PREVIEW or "<" in text[at + 1 : close]:
        return (
            "'<' that is not pause markup: a pause is <milliseconds>, like <200>; "
            "write 'less than' in prose"
        )
    return f"pause marker {text[at : close + 1]!r} must be whole milliseconds, like <200>"
