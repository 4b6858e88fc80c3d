"""The engine's WebSocket batching as a pure model: any messages, any timing of the syntheses."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from rime_local.batching import Batcher, BatchTimes, Finish, Hangup, Piece, SegmentMode, Speak
from rime_local.script import MarkupOptions, Span
from rime_local.synthesis import Words

PLAIN = MarkupOptions()


@dataclass(frozen=True)
class Text:
    words: tuple[int, ...]  # word numbers; each word is "w<n>", some end a sentence
    ends: tuple[bool, ...]
    context_id: str | None

    @property
    def text(self) -> str:
        return "".join(
            f"w{n}{'.' if end else ''} " for n, end in zip(self.words, self.ends, strict=True)
        )


@dataclass(frozen=True)
class Op:
    kind: str  # text | flush | clear | tick (the running step finishes)
    text: Text | None = None


@dataclass
class Run:
    """What the session did: every step it carried out to its end, in order."""

    done: list[Speak | Finish | Hangup | None] = field(default_factory=list)  # None: a clear
    flushes: list[int] = field(default_factory=list)  # highest word number sent before each


def _numbers(piece: Piece) -> list[int]:
    return [int(w.strip(".")[1:]) for w in piece.text.split()]


def simulate(segment: SegmentMode, ops: list[Op], eos: bool) -> Run:
    batcher = Batcher(segment)
    run = Run()
    running: Speak | Finish | Hangup | None = None
    highest = -1

    def pump() -> None:
        nonlocal running
        if running is None:
            running = batcher.next_step()

    def tick() -> None:
        nonlocal running
        if running is not None:
            run.done.append(running)
            running = None
        pump()

    for op in ops:
        if op.kind == "text" and op.text is not None:
            batcher.text(Span(op.text.text, PLAIN), op.text.context_id)
            highest = max(highest, *op.text.words)
        elif op.kind == "flush":
            batcher.flush()
            run.flushes.append(highest)
        elif op.kind == "clear":
            batcher.clear()
            running = None  # the step in flight is stopped, never finished
            run.done.append(None)
        if op.kind == "tick":
            tick()
        else:
            pump()
    if eos:
        batcher.eos()
        run.flushes.append(highest)
    else:
        batcher.flush()
        run.flushes.append(highest)
    pump()
    while running is not None:
        tick()
    return run


_CONTEXTS = st.sampled_from([None, "a", "b"])


@st.composite
def _ops(draw: st.DrawFn, clears: bool) -> list[Op]:
    kinds = ["text", "text", "flush", "tick", "tick", *(["clear"] if clears else [])]
    ops: list[Op] = []
    number = 0
    for kind in draw(st.lists(st.sampled_from(kinds), max_size=30)):
        if kind == "text":
            count = draw(st.integers(1, 3))
            ends = tuple(draw(st.lists(st.booleans(), min_size=count, max_size=count)))
            words = tuple(range(number, number + count))
            number += count
            ops.append(Op("text", Text(words, ends, draw(_CONTEXTS))))
        else:
            ops.append(Op(kind))
    return ops


_MODES = st.sampled_from([SegmentMode.NEVER, SegmentMode.BY_SENTENCE, SegmentMode.IMMEDIATE])


def _batches(run: Run) -> list[tuple[list[Piece], Finish]]:
    out: list[tuple[list[Piece], Finish]] = []
    pieces: list[Piece] = []
    for step in run.done:
        if step is None:
            pieces = []  # cleared: that batch gets no done
        elif isinstance(step, Speak):
            pieces.append(step.piece)
        elif isinstance(step, Finish):
            out.append((pieces, step))
            pieces = []
    assert pieces == [], "every piece is followed by its batch's done"
    return out


@settings(max_examples=400, deadline=None)
@given(segment=_MODES, ops=_ops(clears=True), eos=st.booleans())
def test_a_batch_is_one_context_never_spans_a_flush_and_always_ends_in_done(
    segment: SegmentMode, ops: list[Op], eos: bool
) -> None:
    run = simulate(segment, ops, eos)
    for pieces, finish in _batches(run):
        assert pieces, "a done closes at least one synthesis"
        assert {p.context_id for p in pieces} == {finish.context_id}
        # No flush falls between two pieces of one batch: text sent before a flush and text
        # sent after it never share a done.
        for before, after in itertools.pairwise(pieces):
            last, first = max(_numbers(before)), min(_numbers(after))
            assert not any(last <= flushed < first for flushed in run.flushes)
    spoken = [n for step in run.done if isinstance(step, Speak) for n in _numbers(step.piece)]
    assert spoken == sorted(spoken)
    hangups = [step for step in run.done if isinstance(step, Hangup)]
    assert len(hangups) == (1 if eos else 0)
    if eos:
        assert run.done[-1] == hangups[0]


@settings(max_examples=400, deadline=None)
@given(segment=_MODES, ops=_ops(clears=False), eos=st.booleans())
def test_without_clear_every_word_is_spoken_once_and_in_order(
    segment: SegmentMode, ops: list[Op], eos: bool
) -> None:
    run = simulate(segment, ops, eos)
    sent = [n for op in ops if op.text is not None for n in op.text.words]
    spoken = [n for step in run.done if isinstance(step, Speak) for n in _numbers(step.piece)]
    assert spoken == sent
    if segment is SegmentMode.NEVER:
        # One done per non-empty flush: seed 004 synthesizes each flushed buffer as its own
        # utterance, however many wait.
        non_empty = sum(now > before for before, now in itertools.pairwise([-1, *run.flushes]))
        assert sum(isinstance(s, Finish) for s in run.done) == non_empty


def test_three_sentences_and_a_flush_while_busy_are_one_batch() -> None:
    batcher = Batcher(SegmentMode.BY_SENTENCE)
    batcher.text(Span("One. ", PLAIN), "turn")
    first = batcher.next_step()
    assert isinstance(first, Speak) and first.piece.text == "One."
    batcher.text(Span("Two. ", PLAIN), "turn")
    batcher.text(Span("Three.", PLAIN), "turn")
    batcher.flush()
    second = batcher.next_step()
    assert isinstance(second, Speak) and second.piece.text == " Two. Three."
    assert batcher.next_step() == Finish("turn")
    assert batcher.next_step() is None


def test_a_cut_inside_a_message_with_its_own_speeds_keeps_each_value_with_its_word() -> None:
    batcher = Batcher(SegmentMode.BY_SENTENCE)
    own = MarkupOptions(inline_speeds=(3.0, 0.5))
    batcher.text(Span("A [slow] one. And [fast] too", own, alone=True), None)
    step = batcher.next_step()
    assert isinstance(step, Speak)
    assert step.piece.spans == (Span("A [slow] one.", own, alone=True),)
    assert batcher.buffer == [Span(" And [fast] too", MarkupOptions(inline_speeds=(0.5,)), True)]


def test_batch_times_shift_each_piece_by_the_audio_before_it() -> None:
    times = BatchTimes()
    times.add_words(Words(("One.",), (0.0,), (0.4,)))
    times.add_audio(0.6)
    times.add_words(Words(("Two", "three."), (0.05, 0.3), (0.3, 0.7)))
    times.add_audio(0.9)
    assert times.event() == Words(("One.", "Two", "three."), (0.0, 0.65, 0.9), (0.4, 0.9, 1.3))
    assert BatchTimes().event() is None
