"""A segment's display words (its text without markup) and their times from word timestamps.

A server's timestamps name words in its own way (espeak's marks, Rime's normalized words), and
may skip or split some. The display text is the request text with markup removed: a `<ms>`
pause is a space, a `[word]` shows its word, and a `{phonemes}` word is timed but never shown
(phonemes are not text). Each display word takes the time of the timestamp word it matches by
spoken form (`pipeline.rime.utterance.spoken_form`), in order; a run of display words with no
match shares the time between its matched neighbours in proportion to its lengths, so every
display word is timed once and times never run backwards.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.markup import Pause, Phonemes, SpeedWord, Text, parse
from pipeline.rime.events import WordTimestamp
from pipeline.rime.utterance import spoken_form

_HIDDEN = "\x00"  # stands for a {phonemes} word inside the display text


@dataclass(frozen=True)
class TimedWord:
    """A word as a caption shows it, with its start and end in seconds."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class _Display:
    shown: str  # what a caption shows ("" for a word that is only phonemes)
    form: str  # what it is matched on


def display_words(text: str) -> list[_Display]:
    """The words of a request text as captions show them, markup removed."""
    shown: list[str] = []
    spoken: list[str] = []
    for token in parse(text):
        if isinstance(token, Text):
            shown.append(token.text)
            spoken.append(token.text)
        elif isinstance(token, SpeedWord):
            shown.append(token.word)
            spoken.append(token.word)
        elif isinstance(token, Phonemes):
            shown.append(_HIDDEN)
            spoken.append(token.phonemes.replace(" ", ""))
        elif isinstance(token, Pause):
            shown.append(" ")
            spoken.append(" ")
    words: list[_Display] = []
    for display, form in zip("".join(shown).split(), "".join(spoken).split(), strict=True):
        words.append(_Display(display.replace(_HIDDEN, ""), spoken_form(form)))
    return words


def timed_words(text: str, stamps: Sequence[WordTimestamp]) -> list[TimedWord]:
    """Every shown word of `text` with its time from `stamps` (see the module's rules)."""
    display = display_words(text)
    times: list[tuple[float, float] | None] = [None] * len(display)
    forms = [spoken_form(s.word) for s in stamps]
    matcher = difflib.SequenceMatcher(None, [d.form for d in display], forms, autojunk=False)
    anchors = [(-1, -1)]  # (display index, stamp index) of matched words, both increasing
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            d, s = block.a + offset, block.b + offset
            if display[d].form:
                times[d] = (stamps[s].start, stamps[s].end)
                anchors.append((d, s))
    anchors.append((len(display), len(stamps)))
    for (d0, s0), (d1, s1) in itertools.pairwise(anchors):
        run = range(d0 + 1, d1)
        if not run:
            continue
        unmatched = stamps[s0 + 1 : s1]
        if unmatched:
            start, end = unmatched[0].start, unmatched[-1].end
        else:
            start = stamps[s0].end if s0 >= 0 else (stamps[0].start if stamps else 0.0)
            end = stamps[s1].start if s1 < len(stamps) else start
        end = max(start, end)
        weights = [max(1, len(display[d].shown)) for d in run]
        total = sum(weights)
        at = start
        for d, weight in zip(run, weights, strict=True):
            step = (end - start) * weight / total
            times[d] = (at, at + step)
            at += step
    return [
        TimedWord(d.shown, t[0], max(t[0], t[1]))
        for d, t in zip(display, times, strict=True)
        if d.shown and t is not None
    ]
