"""Captions from word times: display words, cue layout rules, SRT/WebVTT, the cached word file."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.captions import caption_texts, programme_words, sidecar
from pipeline.captions.cues import (
    HOLD_SECONDS,
    MAX_LINE_CHARS,
    MAX_LINES,
    MAX_SECONDS,
    MIN_SECONDS,
    Cue,
    layout,
)
from pipeline.captions.formats import srt, vtt
from pipeline.captions.words import TimedWord, display_words, timed_words
from pipeline.rime.events import WordTimestamp
from pipeline.stitch import Placement

# --- words as speech produces them -----------------------------------------------------------

_letters = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGH'", min_size=1, max_size=12)
_long = st.text(alphabet="abcdefghij/.:-", min_size=43, max_size=100)  # a URL
_punct = st.sampled_from(["", "", "", ",", ".", "?", "!", ";", ":", "—", ".\u201d"])
word_text = st.builds(lambda w, p: w + p, st.one_of(_letters, _letters, _letters, _long), _punct)


@st.composite
def spoken(draw: st.DrawFn) -> list[TimedWord]:
    """Words at speech rates: each at least 250 ms and 50 ms a character, with silences
    between them from none to several seconds."""
    texts = draw(st.lists(word_text, min_size=1, max_size=80))
    words, at = [], draw(st.floats(0, 3))
    for text in texts:
        at += draw(st.one_of(st.just(0.0), st.floats(0, 0.3), st.floats(0.3, 4.0)))
        length = max(0.25, 0.05 * len(text)) + draw(st.floats(0, 0.4))
        words.append(TimedWord(text, at, at + length))
        at += length
    return words


def _shown_words(cues: list[Cue]) -> list[str]:
    return " ".join(" ".join(c.lines) for c in cues).split()


@settings(max_examples=300, deadline=None)
@given(spoken())
def test_cues_follow_the_subtitle_rules(words: list[TimedWord]) -> None:
    cues = layout(words)
    for cue in cues:
        assert 1 <= len(cue.lines) <= MAX_LINES
        assert all(0 < len(line) <= MAX_LINE_CHARS for line in cue.lines), cue
        assert MIN_SECONDS - 1e-9 <= cue.end - cue.start <= MAX_SECONDS + 1e-9, cue
    for a, b in itertools.pairwise(cues):
        assert a.end <= b.start  # never two on screen at once
    # Every word shows once, in order (a word longer than a line in line-long pieces).
    assert "".join(_shown_words(cues)) == "".join(w.text for w in words)
    # A cue appears when its first word starts.
    starts = {w.start for w in words}
    assert all(c.start in starts or _inside_a_long_word(c, words) for c in cues)


def _inside_a_long_word(cue: Cue, words: list[TimedWord]) -> bool:
    return any(len(w.text) > MAX_LINE_CHARS and w.start <= cue.start <= w.end for w in words)


@settings(max_examples=200, deadline=None)
@given(spoken())
def test_no_cue_is_held_over_a_long_silence(words: list[TimedWord]) -> None:
    cues = layout(words)
    for before, after in itertools.pairwise(words):
        if after.start - before.end >= HOLD_SECONDS:
            assert any(c.start == after.start for c in cues), (before, after)


def _w(text: str, start: float, seconds: float = 0.3) -> TimedWord:
    return TimedWord(text, start, start + seconds)


def _sentence(text: str, start: float, step: float = 0.35) -> list[TimedWord]:
    return [_w(t, start + i * step) for i, t in enumerate(text.split())]


def test_a_cue_is_cut_at_a_sentence_end_before_a_clause_end() -> None:
    first = _sentence("Rivers run to the sea, and lakes are still.", 0.0)
    second = _sentence("Roads join them all, from hill to hill and town to town.", 3.0)
    cues = layout(first + second)
    assert [" ".join(c.lines) for c in cues] == [
        "Rivers run to the sea, and lakes are still.",
        "Roads join them all, from hill to hill and town to town.",
    ]
    assert cues[1].start == 3.0


def test_lines_are_cut_evenly_after_punctuation() -> None:
    words = _sentence("Today we talk about rivers, lakes and the long roads between them.", 0)
    (cue,) = layout(words)
    # The most even cut ("...rivers, lakes / and the...") loses to the one after the comma.
    assert cue.lines == ("Today we talk about rivers,", "lakes and the long roads between them.")


def test_a_short_last_cue_is_shown_for_the_minimum() -> None:
    (cue,) = layout([_w("Hi.", 2.0, 0.2)])
    assert (cue.start, cue.end) == (2.0, 2.0 + MIN_SECONDS)


# --- display words and their times ----------------------------------------------------------


def test_markup_is_removed_and_phoneme_words_are_timed_but_hidden() -> None:
    text = "Say [slowly] <300> the name {r'aIm} now."
    assert [d.shown for d in display_words(text)] == ["Say", "slowly", "the", "name", "", "now."]
    stamps = [
        WordTimestamp(w, i * 0.5, i * 0.5 + 0.4)
        for i, w in enumerate(["Say", "slowly", "the", "name", "r'aIm", "now."])
    ]
    words = timed_words(text, stamps)
    assert [(w.text, w.start) for w in words] == [
        ("Say", 0.0),
        ("slowly", 0.5),
        ("the", 1.0),
        ("name", 1.5),
        ("now.", 2.5),
    ]


def test_words_the_timestamps_skip_share_the_time_around_them() -> None:
    # espeak skips "the" after "of"; a server may normalize "2" to "two".
    stamps = [
        WordTimestamp("one", 0.0, 0.3),
        WordTimestamp("of", 0.3, 0.5),
        WordTimestamp("two", 0.9, 1.2),
        WordTimestamp("cats", 1.2, 1.6),
    ]
    words = timed_words("one of the 2 cats", stamps)
    assert [w.text for w in words] == ["one", "of", "the", "2", "cats"]
    # "the" and "2" share the time of the words between their matched neighbours ("two"),
    # in proportion to their lengths.
    assert (words[2].start, words[2].end) == pytest.approx((0.9, 1.125))
    assert (words[3].start, words[3].end) == pytest.approx((1.125, 1.2))
    assert words[4].start == pytest.approx(1.2)
    # With nothing between the neighbours, they share the silence between them.
    words = timed_words("one of the cats", [stamps[0], stamps[1], stamps[3]])
    assert (words[2].start, words[2].end) == pytest.approx((0.5, 1.2))


_plain = st.text(alphabet="abcdefg ", min_size=1, max_size=10)


@st.composite
def marked_up(draw: st.DrawFn) -> str:
    """A request text of words, `<ms>` pauses, `[word]`s and `{phonemes}`."""
    pieces = draw(
        st.lists(
            st.one_of(
                _letters,
                _letters.map(lambda w: f"[{w}]"),
                _letters.map(lambda w: "{" + w + "}"),
                st.integers(1, 900).map(lambda ms: f"<{ms}>"),
            ),
            min_size=1,
            max_size=30,
        )
    )
    return " ".join(pieces)


@settings(max_examples=200, deadline=None)
@given(marked_up(), st.data())
def test_markup_never_shows_and_every_shown_word_is_timed_in_order(
    text: str, data: st.DataObject
) -> None:
    shown = [d.shown for d in display_words(text) if d.shown]
    # Timestamps that match some words, miss others and add their own.
    spoken = data.draw(st.lists(st.sampled_from([*shown, "extra"]) if shown else st.just("x")))
    stamps = [WordTimestamp(w, i * 0.4, i * 0.4 + 0.3) for i, w in enumerate(spoken)]
    words = timed_words(text, stamps)
    assert [w.text for w in words] == shown
    assert not any(re.search(r"[<>{}\[\]]", w.text) for w in words)
    for a, b in itertools.pairwise(words):
        assert a.start <= a.end <= b.start + 1e-9
    cues = layout(words)
    assert _shown_words(cues) == shown
    assert not any(re.search(r"[<>{}\[\]]", line) for c in cues for line in c.lines)


def test_programme_words_move_each_segment_by_its_placement() -> None:
    rate = 1000
    segments = [
        ("Hello there.", [WordTimestamp("Hello", 0.05, 0.3), WordTimestamp("there.", 0.3, 0.6)]),
        ("<500>", []),
        ("Again.", [WordTimestamp("Again.", 0.02, 0.4)]),
    ]
    placements = [
        Placement(part=0, source_start=40, programme_start=300, length=600, rate=rate),
        Placement(part=2, source_start=10, programme_start=1700, length=420, rate=rate),
    ]
    words = programme_words(segments, placements)
    assert [(w.text, round(w.start, 3)) for w in words] == [
        ("Hello", 0.31),
        ("there.", 0.56),
        ("Again.", 1.71),
    ]


# --- the files ------------------------------------------------------------------------------


def test_srt_and_vtt_are_written_in_their_syntax() -> None:
    cues = [Cue(0.4, 2.5, ("Fish & chips,", "and more.")), Cue(3661.0015, 3663.0, ("Last.",))]
    assert srt(cues) == (
        "1\n00:00:00,400 --> 00:00:02,500\nFish & chips,\nand more.\n\n"
        "2\n01:01:01,002 --> 01:01:03,000\nLast.\n"
    )
    assert vtt(cues) == (
        "WEBVTT\n\n00:00:00.400 --> 00:00:02.500\nFish &amp; chips,\nand more.\n\n"
        "01:01:01.002 --> 01:01:03.000\nLast.\n"
    )


def test_caption_texts_give_each_format_the_same_cues() -> None:
    texts = caption_texts(_sentence("One two three.", 1.0), ["srt", "vtt"])
    assert set(texts) == {"srt", "vtt"}
    assert "00:00:01,000 --> 00:00:02,000" in texts["srt"]
    assert "00:00:01.000 --> 00:00:02.000" in texts["vtt"]


def test_a_word_file_is_used_only_with_the_audio_it_was_made_with() -> None:
    words = (WordTimestamp("Hello", 0.0, 0.3), WordTimestamp("wörld", 0.3, 0.7))
    data = sidecar.encode(b"RIFF audio", words)
    assert sidecar.decode(data, b"RIFF audio") == words
    assert sidecar.decode(data, b"RIFF other audio") is None
    assert sidecar.decode(b"{not json", b"RIFF audio") is None
    assert sidecar.decode(b'{"version": 1}', b"RIFF audio") is None
