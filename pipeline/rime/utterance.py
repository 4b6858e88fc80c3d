"""One utterance's audio and word times, assembled from /ws3 events however the server batches.

`RimeWsClient.synthesize` sends an utterance's text under a context id of its own and one flush,
and hands every event of that context to an `Assembly`. A server may answer the flush with one
`timestamps` event and one `done` (the local engine does), or with several of each, one per
piece it synthesized, each timed from the start of its own piece (Rime's cloud may). The rules
that make both come out the same:

- Times. An event whose first word starts before the words already assembled end cannot be
  timed from the utterance's start, so it is timed from its piece's start: it is shifted by the
  audio received before that piece, which is the audio received when the previous timestamps or
  done event arrived (a piece's events follow its audio). Where the format's length is unknown
  without decoding it (MP3), it is shifted by the last word's end instead, which leaves out the
  silence after that word. An event whose times run on from the words before is taken as timed
  from the utterance's start already.
- The end. A done ends the utterance if the words assembled by then reach the text's last word
  (any done, if the text has no word to time). A done before that means more pieces are coming:
  the utterance then ends at a later done that does, or when nothing more of its context
  arrives within `SETTLE_SECONDS` of a done, or when, after a done, an event of another context
  arrives (the server has moved on).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.rime.events import Chunk, Done, Timestamps, WordTimestamp

# After a done that leaves the text's last word untimed: how long more pieces may take to start.
# Rime's cloud starts audio in well under a second.
SETTLE_SECONDS = 1.0
# Times within this of the words before count as running on (servers round to milliseconds).
_SLACK_SECONDS = 0.002
_PAUSE = re.compile(r"<\d+>")


def spoken_form(word: str) -> str:
    """A word reduced to what the text and a timestamps event agree on: lower-case letters and
    digits, without punctuation or markup brackets."""
    return "".join(ch for ch in word.lower() if ch.isalnum())


def last_word(text: str) -> str | None:
    """The spoken form of the text's last word; None if the text has none (only pauses)."""
    for word in reversed(_PAUSE.sub(" ", text).split()):
        form = spoken_form(word)
        if form:
            return form
    return None


@dataclass(frozen=True)
class Synthesis:
    """The gathered result of one utterance: its audio and its word times from its start."""

    audio: bytes
    words: tuple[WordTimestamp, ...]
    context_id: str


class Assembly:
    """An utterance being received: feed it the events of its context, in order."""

    def __init__(
        self, text: str, context_id: str, seconds_of: Callable[[bytes], float | None]
    ) -> None:
        self.context_id = context_id
        self.dones = 0
        self.complete = False  # a done came when the words reached the text's last word
        self._last_word = last_word(text)
        self._seconds_of = seconds_of  # None when the format's length needs decoding
        self._audio: list[bytes] = []
        self._words: list[WordTimestamp] = []
        self._piece_start = 0.0

    def add(self, event: Chunk | Timestamps | Done) -> None:
        """Take the next event of this utterance's context."""
        if isinstance(event, Chunk):
            self._audio.append(event.audio)
            return
        if isinstance(event, Timestamps):
            items = event.items()
            if items:
                ran_on = not self._words or items[0].start >= self._words[-1].end - _SLACK_SECONDS
                shift = 0.0 if ran_on else self._piece_start
                self._words += [
                    WordTimestamp(w.word, w.start + shift, w.end + shift) for w in items
                ]
        else:
            self.dones += 1
            self.complete = self._reached_last_word()
        self._piece_start = self._audio_seconds()

    def _reached_last_word(self) -> bool:
        if self._last_word is None:
            return True
        forms = [form for w in self._words if (form := spoken_form(w.word))]
        return bool(forms) and forms[-1] == self._last_word

    def result(self) -> Synthesis:
        """The audio and word times received."""
        return Synthesis(b"".join(self._audio), tuple(self._words), self.context_id)

    def _audio_seconds(self) -> float:
        seconds = self._seconds_of(b"".join(self._audio))
        if seconds is not None:
            return seconds
        return self._words[-1].end if self._words else 0.0
