"""Where a sentence (or, on `/ws`, a phrase) ends: the heuristics behind `segment=bySentence`.

Rime fires synthesis at `.` `?` `!` (and on `/ws` also at `,`). A mark counts as an end only when
it is followed by whitespace or by the end of the text received so far (closing quotes and
brackets may sit in between), and, for a period, when the word before it is not a known
abbreviation (`Dr.`, `e.g.`), an initial (`J.`), or part of an ellipsis, and the next word does not
start in lower case. So `2.5ml`, `1,000`, `Dr. Smith`, `e.g. this` and `J. K. Rowling` never split.
A period at the very end of the received text counts, as it does at Rime: a client that sends
`"2."` and `"5ml"` as separate tokens gets an early synthesis (seed 004 warns about exactly this).
"""

from __future__ import annotations

SENTENCE_MARKS = frozenset(".?!")
PHRASE_MARKS = frozenset(".?!,")
_CLOSERS = frozenset("\"')]}»”’")
_OPENERS = "\"'([{«“‘"

# Lower-case, without the final period. Words that often end a sentence ("etc.", "Inc.", "No.")
# are left out on purpose.
ABBREVIATIONS = frozenset(
    {
        "dr",
        "mr",
        "mrs",
        "ms",
        "mx",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "ft",
        "vs",
        "approx",
        "dept",
        "fig",
        "gen",
        "gov",
        "lt",
        "col",
        "capt",
        "sgt",
        "rev",
        "hon",
        "e.g",
        "i.e",
        "cf",
        "a.m",
        "p.m",
    }
)


def _word_before(text: str, index: int) -> str:
    start = index
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:index].lstrip(_OPENERS)


def _is_abbreviation(word: str) -> bool:
    lowered = word.lower()
    if lowered in ABBREVIATIONS:
        return True
    if len(word) == 1 and word.isalpha() and word.isupper():
        return True  # an initial
    parts = word.split(".")
    # Dotted letter groups like "U.S" or "e.g" (the final period is the candidate itself).
    return len(parts) > 1 and all(1 <= len(p) <= 2 and p.isalpha() for p in parts)


def _boundary_end(text: str, index: int, marks: frozenset[str]) -> int | None:
    """If `text[index]` ends a sentence, the index just past it and any closers; else None."""
    mark = text[index]
    if mark not in marks:
        return None
    end = index + 1
    while end < len(text) and text[end] in _CLOSERS:
        end += 1
    if end < len(text) and not text[end].isspace():
        return None  # 2.5, 1,000, e.g. the inner dots, "?!" (the last mark decides)
    if mark != ".":
        return end
    if index > 0 and text[index - 1] == ".":
        return None  # an ellipsis runs on
    if _is_abbreviation(_word_before(text, index)):
        return None
    after = end
    while after < len(text) and text[after].isspace():
        after += 1
    if after < len(text) and text[after].islower():
        return None
    return end


def boundaries(text: str, marks: frozenset[str] = SENTENCE_MARKS) -> list[int]:
    """Indices just past every sentence end in `text`, in order."""
    found: list[int] = []
    for index, char in enumerate(text):
        if char in marks:
            end = _boundary_end(text, index, marks)
            if end is not None and (not found or end > found[-1]):
                found.append(end)
    return found


def last_boundary(text: str, marks: frozenset[str] = SENTENCE_MARKS) -> int | None:
    """Index just past the last sentence end in `text`, or None when there is none."""
    found = boundaries(text, marks)
    return found[-1] if found else None


def split_sentences(text: str) -> list[str]:
    """`text` cut after each sentence end; the pieces joined give `text` back."""
    pieces: list[str] = []
    start = 0
    for end in boundaries(text):
        pieces.append(text[start:end])
        start = end
    if start < len(text):
        pieces.append(text[start:])
    return pieces
