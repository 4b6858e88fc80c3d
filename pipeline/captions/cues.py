"""Cue layout: timed words into subtitle cues, by the usual subtitle conventions.

- A cue has at most `MAX_LINES` lines of at most `MAX_LINE_CHARS` characters; a word longer
  than a line (a URL) is cut into line-long pieces, each timed by its share of the word.
- A cue starts when its first word starts and stays up at least `MIN_SECONDS` (its last word's
  end, held to the minimum) and at most `MAX_SECONDS`, and never past the next cue's start.
  The minimum needs words no faster than speech (a run of words long enough to fill a cue
  lasts longer than it); a faster run is shown until the next cue, however short that is.
- Cues are filled as far as these limits allow and then cut at the best place inside: a
  sentence end (or a silence of at least `PAUSE_SECONDS`) before a clause end before any
  word, the latest of the best kind, preferring a cut that leaves the cue its minimum time.
  A silence of `HOLD_SECONDS` or more always ends a cue: no cue stays up over a long pause.
- Two lines are cut where they come out most even, favouring a cut after punctuation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.captions.words import TimedWord

MAX_LINE_CHARS = 42
MAX_LINES = 2
MIN_SECONDS = 1.0
MAX_SECONDS = 7.0
PAUSE_SECONDS = 0.5
HOLD_SECONDS = 1.5
_SENTENCE_END = tuple(".!?…")
_CLAUSE_END = tuple(",;:—–")
_CLOSING = "\"'”’»)"
# How much a line cut after punctuation may be less even than the most even cut.
_PUNCTUATION_BONUS = 8


@dataclass(frozen=True)
class Cue:
    """One subtitle: its time on screen in seconds and its lines."""

    start: float
    end: float
    lines: tuple[str, ...]


def layout(words: Sequence[TimedWord]) -> list[Cue]:
    """The cues of a programme's words (in order, in programme seconds)."""
    pieces = [piece for word in words for piece in _pieces(word)]
    cues: list[Cue] = []
    i, n = 0, len(pieces)
    while i < n:
        k = i + 1  # the longest run from i that fits is pieces[i:k]
        while k < n and _lines(pieces[i : k + 1]) is not None and _span(pieces, i, k + 1):
            k += 1
        held = next((j for j in range(i + 1, k) if _gap(pieces, j) >= HOLD_SECONDS), None)
        if held is not None:
            j = held
        elif k == n:
            j = n
        else:
            j = max(range(i + 1, k + 1), key=lambda j: _cut_score(pieces, i, j))
        cues.append(_cue(pieces, i, j))
        i = j
    return cues


def _cue(pieces: Sequence[TimedWord], i: int, j: int) -> Cue:
    start = pieces[i].start
    next_start = pieces[j].start if j < len(pieces) else math.inf
    end = min(max(pieces[j - 1].end, start + MIN_SECONDS), start + MAX_SECONDS, next_start)
    lines = _lines(pieces[i:j])
    assert lines is not None
    return Cue(start, end, lines)


def _span(pieces: Sequence[TimedWord], i: int, j: int) -> bool:
    return pieces[j - 1].end - pieces[i].start <= MAX_SECONDS


def _gap(pieces: Sequence[TimedWord], j: int) -> float:
    """The silence before pieces[j]."""
    return pieces[j].start - pieces[j - 1].end


def _level(pieces: Sequence[TimedWord], j: int) -> int:
    """How good a cut before pieces[j] is: 3 sentence end or pause, 2 clause end, 1 word."""
    if j >= len(pieces):
        return 3
    text = pieces[j - 1].text.rstrip(_CLOSING)
    if text.endswith(_SENTENCE_END) or _gap(pieces, j) >= PAUSE_SECONDS:
        return 3
    if text.endswith(_CLAUSE_END):
        return 2
    return 1


def _cut_score(pieces: Sequence[TimedWord], i: int, j: int) -> tuple[bool, int, int]:
    long_enough = pieces[j].start - pieces[i].start >= MIN_SECONDS
    return long_enough, _level(pieces, j), j


def _lines(run: Sequence[TimedWord]) -> tuple[str, ...] | None:
    """The run's text in at most two lines that fit, cut most evenly; None if it cannot fit."""
    texts = [w.text for w in run]
    whole = " ".join(texts)
    if len(whole) <= MAX_LINE_CHARS:
        return (whole,)
    best: tuple[int, tuple[str, str]] | None = None
    for cut in range(1, len(texts)):
        first, second = " ".join(texts[:cut]), " ".join(texts[cut:])
        if len(first) > MAX_LINE_CHARS or len(second) > MAX_LINE_CHARS:
            continue
        score = max(len(first), len(second))
        if texts[cut - 1].rstrip(_CLOSING).endswith(_SENTENCE_END + _CLAUSE_END):
            score -= _PUNCTUATION_BONUS
        if best is None or score < best[0]:
            best = (score, (first, second))
    return None if best is None else best[1]


def _pieces(word: TimedWord) -> list[TimedWord]:
    """A word cut into pieces that fit on a line, each timed by its share of the word."""
    text = word.text
    if len(text) <= MAX_LINE_CHARS:
        return [word]
    parts = [text[at : at + MAX_LINE_CHARS] for at in range(0, len(text), MAX_LINE_CHARS)]
    step = (word.end - word.start) / len(text)
    pieces, at = [], 0
    for part in parts:
        start = word.start + at * step
        at += len(part)
        pieces.append(TimedWord(part, start, word.start + at * step))
    return pieces
