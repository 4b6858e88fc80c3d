"""What a WebSocket session synthesizes when, and where its `done` events fall (no I/O here).

A *piece* is one internal synthesis: text taken from the buffer, with the context id its events
carry. A *batch* is what one `done` closes: one or more pieces of one context id whose audio
goes out back to back, then one `timestamps` event for all of them, then `done`. Why `done` sits
where it does, and what the seeds say, is in `rime_local.ws`. The rules:

- A flush (or eos) ends the batch of everything received before it; the flushed buffer is its
  last piece. Under `never` that makes each non-empty flush one batch, however many are queued.
- Under `bySentence` and `immediate` (and `/ws`'s phrases) the engine starts pieces itself. A
  piece that becomes due while a batch runs joins it, so the batch ends only once nothing
  synthesizable is left: no flushed text waiting, and no sentence end (`bySentence`) or no text
  at all (`immediate`) in the buffer.
- A piece of another context id ends the running batch first.
- clear drops the buffer, the waiting pieces and the running batch (no timestamps, no done).

The session asks `next_step()` whenever nothing is running, and carries out what it returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from rime_local.script import Span, split_span
from rime_local.sentences import PHRASE_MARKS, SENTENCE_MARKS, last_boundary
from rime_local.synthesis import Words


class SegmentMode(StrEnum):
    """A session's `segment` mode: when buffered text is synthesized."""

    NEVER = "never"  # only on flush / eos
    BY_SENTENCE = "bySentence"  # at sentence ends, when idle
    IMMEDIATE = "immediate"  # on receipt, when idle
    BY_PHRASE = "byPhrase"  # /ws: at . , ? ! when idle


@dataclass(frozen=True)
class Piece:
    """Text for one internal synthesis and the context id its events carry."""

    spans: tuple[Span, ...]
    context_id: str | None

    @property
    def text(self) -> str:
        """The piece's text as received."""
        return "".join(span.text for span in self.spans)


@dataclass(frozen=True)
class Speak:
    """Synthesize `piece` and send its audio, as part of the running batch."""

    piece: Piece


@dataclass(frozen=True)
class Finish:
    """Send the running batch's timestamps, then its done."""

    context_id: str | None


@dataclass(frozen=True)
class Hangup:
    """After eos, all is spoken: send a bare done first if none followed the eos, then close."""

    done_first: bool
    context_id: str | None


Step = Speak | Finish | Hangup


class _Close:
    """In the waiting queue: the batch ends here (a flush was received)."""


_CLOSE = _Close()


class Batcher:
    """The buffer, the waiting queue and the running batch of one session."""

    def __init__(self, segment: SegmentMode) -> None:
        self.segment = segment
        self.buffer: list[Span] = []
        # "The most recent context id at the time audio was requested": a text message without
        # one sets it to null.
        self.context_id: str | None = None
        self._waiting: deque[Piece | _Close] = deque()
        self._batch_open = False
        self._batch_context: str | None = None
        self._eos = False
        self._done_since_eos = False
        self._hung_up = False

    # Input.

    def text(self, span: Span, context_id: str | None) -> None:
        """Text received, and the context id it came with."""
        self.buffer.append(span)
        self.context_id = context_id

    def flush(self) -> None:
        """The buffer becomes the last piece of a batch (a whitespace-only buffer is dropped)."""
        if self._buffered().strip():
            self._waiting.append(Piece(tuple(self.buffer), self.context_id))
            self._waiting.append(_CLOSE)
        elif self._batch_open and not self._waiting:
            # Nothing new to speak, but text arriving from now on belongs to the next batch.
            self._waiting.append(_CLOSE)
        self.buffer = []

    def clear(self) -> None:
        """Drop the buffer, the waiting pieces and the running batch."""
        self.buffer = []
        self._waiting.clear()
        self._batch_open = False

    def eos(self) -> None:
        """Flush, and hang up once everything is spoken."""
        self._eos = True
        self.flush()

    @property
    def ended(self) -> bool:
        """eos was received: further messages are ignored."""
        return self._eos

    # Scheduling.

    def next_step(self) -> Step | None:
        """What to do now that nothing is running; None to wait for more input."""
        if self._hung_up:
            return None
        while self._waiting and isinstance(self._waiting[0], _Close):
            self._waiting.popleft()
            if self._batch_open:
                return self._finish()
        if self._waiting:
            piece = self._waiting[0]
            assert isinstance(piece, Piece)
            if self._batch_open and self._batch_context != piece.context_id:
                return self._finish()
            self._waiting.popleft()
            return self._speak(piece)
        cut = self._due()
        if cut is not None:
            if self._batch_open and self._batch_context != self.context_id:
                return self._finish()
            return self._speak(Piece(self._take(cut), self.context_id))
        if self._batch_open:
            return self._finish()
        if self._eos:
            self._hung_up = True
            return Hangup(not self._done_since_eos, self.context_id)
        return None

    def _speak(self, piece: Piece) -> Speak:
        self._batch_open = True
        self._batch_context = piece.context_id
        return Speak(piece)

    def _finish(self) -> Finish:
        self._batch_open = False
        if self._eos:
            self._done_since_eos = True
        return Finish(self._batch_context)

    def _buffered(self) -> str:
        return "".join(span.text for span in self.buffer)

    def _due(self) -> int | None:
        """Where the buffer is cut for a piece the engine starts itself, if one is due."""
        text = self._buffered()
        if not text.strip():
            return None
        if self.segment is SegmentMode.BY_SENTENCE:
            return last_boundary(text, SENTENCE_MARKS)
        if self.segment is SegmentMode.BY_PHRASE:
            return last_boundary(text, PHRASE_MARKS)
        if self.segment is SegmentMode.IMMEDIATE:
            return len(text)
        return None

    def _take(self, cut: int) -> tuple[Span, ...]:
        """The buffer's spans up to character `cut`; the rest stays buffered."""
        taken: list[Span] = []
        rest: list[Span] = []
        pos = 0
        for span in self.buffer:
            end = pos + len(span.text)
            if end <= cut:
                taken.append(span)
            elif pos >= cut:
                rest.append(span)
            else:
                head, tail = split_span(span, cut - pos)
                taken.append(head)
                rest.append(tail)
            pos = end
        self.buffer = rest
        return tuple(taken)


@dataclass
class BatchTimes:
    """The running batch's word timings, in seconds from the start of its audio.

    Seed 001: "Times are in seconds, measured from the beginning of the audio for the current
    synthesis". One event per batch, so a reader that adds each event's times to the last end
    of the one before (within an utterance) and a reader that adds nothing read the same times.
    """

    seconds: float = 0.0  # audio of the batch's finished pieces: where the next piece starts
    words: list[str] = field(default_factory=list)
    start: list[float] = field(default_factory=list)
    end: list[float] = field(default_factory=list)

    def add_words(self, words: Words) -> None:
        """Timings of the running piece, measured from the piece's start."""
        self.words.extend(words.words)
        self.start.extend(round(self.seconds + s, 3) for s in words.start)
        self.end.extend(round(self.seconds + e, 3) for e in words.end)

    def add_audio(self, seconds: float) -> None:
        """A piece finished with `seconds` of audio."""
        self.seconds += seconds

    def event(self) -> Words | None:
        """The batch's one timestamps event, or None if it had no words."""
        if not self.words:
            return None
        return Words(tuple(self.words), tuple(self.start), tuple(self.end))
