"""Captions: SRT and WebVTT from the word timestamps of a script's segments.

Each segment's words are timed from the start of its own audio (`sidecar`, in the segment
cache); the stitcher reports where each segment's kept audio landed in the programme
(`pipeline.stitch.Placement`), and every word is moved by that same placement, so trims,
pauses and the lead pause move the words exactly as they moved the audio. Then `words` maps
the timestamps onto the display text (markup removed), `cues` lays the cues out, and `formats`
writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.captions.cues import Cue, layout
from pipeline.captions.formats import WRITERS
from pipeline.captions.words import TimedWord, timed_words
from pipeline.rime.events import WordTimestamp
from pipeline.stitch import Placement

__all__ = ["Cue", "TimedWord", "caption_texts", "layout", "programme_words"]


def programme_words(
    segments: Sequence[tuple[str, Sequence[WordTimestamp]]], placements: Sequence[Placement]
) -> list[TimedWord]:
    """The shown words of every segment ((request text, its timestamps), in order), in
    programme seconds; a segment the stitcher placed nothing of (all silence) shows nothing."""
    placed = {p.part: p for p in placements}
    words: list[TimedWord] = []
    for index, (text, stamps) in enumerate(segments):
        placement = placed.get(index)
        if placement is None:
            continue
        for word in timed_words(text, stamps):
            words.append(
                TimedWord(
                    word.text,
                    placement.programme_seconds(word.start),
                    placement.programme_seconds(word.end),
                )
            )
    return words


def caption_texts(words: Sequence[TimedWord], formats: Sequence[str]) -> Mapping[str, str]:
    """Each requested caption format's file contents for the programme's words."""
    cues = layout(words)
    return {fmt: WRITERS[fmt](cues) for fmt in formats}
