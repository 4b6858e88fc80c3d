"""Assembling one utterance from /ws3 events, whichever way the server batches them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.rime.events import Chunk, Done, Timestamps, WordTimestamp
from pipeline.rime.utterance import Assembly, last_word, spoken_form

RATE = 1000  # samples per second of the made-up PCM below
CONTEXT = "utterance"


def pcm_seconds(audio: bytes) -> float:
    return len(audio) / 2 / RATE


@dataclass(frozen=True)
class Piece:
    """One synthesis of the server's: its audio length and its words, timed from its start."""

    samples: int
    words: tuple[WordTimestamp, ...]


@st.composite
def _pieces(draw: st.DrawFn) -> list[Piece]:
    pieces: list[Piece] = []
    number = 0
    for _ in range(draw(st.integers(1, 4))):
        samples = draw(st.integers(300, 3000))
        seconds = samples / RATE
        # The first word starts in the first 50 ms, as speech does; a later piece's first word
        # so starts before the previous piece's last word ended, measured from the utterance.
        at = draw(st.floats(0, 0.05))
        words = []
        for _ in range(draw(st.integers(1, 5))):
            end = draw(st.floats(at + 0.1, max(at + 0.1, seconds)))
            if end > seconds:
                break
            words.append(WordTimestamp(f"w{number}", round(at, 3), round(end, 3)))
            number += 1
            at = end
        if not words:
            words.append(WordTimestamp(f"w{number}", 0.0, round(seconds, 3)))
            number += 1
        pieces.append(Piece(samples, tuple(words)))
    return pieces


def _stamps(words: list[WordTimestamp]) -> Timestamps:
    return Timestamps(
        tuple(w.word for w in words),
        tuple(w.start for w in words),
        tuple(w.end for w in words),
        CONTEXT,
    )


def _shifted(words: tuple[WordTimestamp, ...], by: float) -> list[WordTimestamp]:
    return [WordTimestamp(w.word, w.start + by, w.end + by) for w in words]


def _truth(pieces: list[Piece]) -> list[WordTimestamp]:
    out: list[WordTimestamp] = []
    offset = 0.0
    for piece in pieces:
        out += _shifted(piece.words, offset)
        offset += piece.samples / RATE
    return out


Style = Callable[[list[Piece]], list[Chunk | Timestamps | Done]]


def one_event_per_utterance(pieces: list[Piece]) -> list[Chunk | Timestamps | Done]:
    """The local engine: all audio, one timestamps event timed from the start, one done."""
    chunks = [Chunk(b"\0\0" * p.samples, CONTEXT) for p in pieces]
    return [*chunks, _stamps(_truth(pieces)), Done(CONTEXT)]


def per_piece_from_its_start(pieces: list[Piece]) -> list[Chunk | Timestamps | Done]:
    """Each piece's audio then its timestamps, timed from the piece's start; one done."""
    events: list[Chunk | Timestamps | Done] = []
    for piece in pieces:
        events += [Chunk(b"\0\0" * piece.samples, CONTEXT), _stamps(list(piece.words))]
    return [*events, Done(CONTEXT)]


def per_piece_with_a_done_each(pieces: list[Piece]) -> list[Chunk | Timestamps | Done]:
    """As above, and a done after every piece."""
    events: list[Chunk | Timestamps | Done] = []
    for piece in pieces:
        events += [Chunk(b"\0\0" * piece.samples, CONTEXT), _stamps(list(piece.words))]
        events.append(Done(CONTEXT))
    return events


def per_piece_from_the_utterance_start(pieces: list[Piece]) -> list[Chunk | Timestamps | Done]:
    """Several timestamps events, each already timed from the utterance's start."""
    events: list[Chunk | Timestamps | Done] = []
    offset = 0.0
    for piece in pieces:
        events.append(Chunk(b"\0\0" * piece.samples, CONTEXT))
        events.append(_stamps(_shifted(piece.words, offset)))
        offset += piece.samples / RATE
    return [*events, Done(CONTEXT)]


STYLES = [
    one_event_per_utterance,
    per_piece_from_its_start,
    per_piece_with_a_done_each,
    per_piece_from_the_utterance_start,
]


@settings(max_examples=300, deadline=None)
@given(pieces=_pieces(), style=st.sampled_from(STYLES))
def test_every_way_of_batching_gives_the_same_utterance(pieces: list[Piece], style: Style) -> None:
    truth = _truth(pieces)
    text = " ".join(w.word for w in truth) + "."
    assembly = Assembly(text, CONTEXT, pcm_seconds)
    events = style(pieces)
    for index, event in enumerate(events):
        assembly.add(event)
        # Complete at the last done only: an earlier one leaves the text's last word untimed.
        assert assembly.complete == (index == len(events) - 1)
    result = assembly.result()
    assert pcm_seconds(result.audio) == pytest.approx(sum(p.samples for p in pieces) / RATE)
    assert [w.word for w in result.words] == [w.word for w in truth]
    for got, want in zip(result.words, truth, strict=True):
        assert got.start == pytest.approx(want.start, abs=1e-6)
        assert got.end == pytest.approx(want.end, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(pieces=_pieces())
def test_without_the_audio_length_pieces_follow_the_last_word(pieces: list[Piece]) -> None:
    # MP3: no length without decoding; each piece is shifted to where the last word ended.
    assembly = Assembly("", CONTEXT, lambda _: None)
    for event in per_piece_from_its_start(pieces):
        assembly.add(event)
    starts = [w.start for w in assembly.result().words]
    assert starts == sorted(starts)
    assert assembly.result().words[-1].end <= sum(p.samples for p in pieces) / RATE + 1e-6


@pytest.mark.parametrize(
    ("text", "last"),
    [
        ("Hello there.", "there"),
        ('He said "stop."', "stop"),
        ("This is [slow].", "slow"),
        ("Say {h'El.o}", "helo"),
        ("Take 2.5ml", "25ml"),
        ("Wait <300>", "wait"),
        ("<500>", None),
    ],
)
def test_the_last_word_is_what_a_timestamps_event_would_call_it(
    text: str, last: str | None
) -> None:
    assert last_word(text) == last


def test_spoken_forms_match_across_markup_and_punctuation() -> None:
    assert spoken_form("[Slow].") == spoken_form("slow") == "slow"


def test_a_text_without_words_is_complete_at_its_first_done() -> None:
    assembly = Assembly("<500>", CONTEXT, pcm_seconds)
    assembly.add(Chunk(b"\0\0" * 500, CONTEXT))
    assert not assembly.complete
    assembly.add(Done(CONTEXT))
    assert assembly.complete
