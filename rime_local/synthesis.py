"""One utterance, synthesized lazily: PCM at the requested rate and word timestamps.

The next sentence goes to espeak only when the consumer has taken the previous one's audio, so
a long text streams its first bytes before its last sentence exists, and a client that hangs up
stops the work. A time scale other than 1 stretches every sentence and every silence by that
factor (`stretch`), and the word timings with them.
"""

from __future__ import annotations

import audioop
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from rime_local.script import MarkupOptions, Sentence, Silence, Span, plan, plan_spans
from rime_local.stretch import Stretcher, stretched_length
from rime_local.voice import Espeak, EspeakChunk, EspeakVoice

SAMPLE_WIDTH = 2  # 16-bit signed little-endian, mono, everywhere inside the engine


@dataclass(frozen=True)
class Voicing:
    """How to speak: espeak voice, speaking rate, output rate, markup switches, time scale."""

    voice: EspeakVoice
    rate_wpm: int
    sampling_rate: int
    markup: MarkupOptions
    # The audio's duration over espeak's: above 1 longer, below 1 shorter, at the same pitch.
    time_scale: float = 1.0


@dataclass(frozen=True)
class Audio:
    """PCM (16-bit LE mono) at the requested sampling rate."""

    pcm: bytes


@dataclass(frozen=True)
class Words:
    """Index-aligned word timings in seconds from the start of the utterance."""

    words: tuple[str, ...]
    start: tuple[float, ...]
    end: tuple[float, ...]


class Resampler:
    """Streaming rate conversion that keeps its filter state across chunks."""

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self.source_rate = source_rate
        self.target_rate = target_rate
        self._state: tuple[int, tuple[tuple[int, int], ...]] | None = None

    def convert(self, pcm: bytes) -> bytes:
        """The next stretch of audio at the target rate."""
        if self.source_rate == self.target_rate or not pcm:
            return pcm
        out, self._state = audioop.ratecv(
            pcm, SAMPLE_WIDTH, 1, self.source_rate, self.target_rate, self._state
        )
        return out


def word_times(
    sentence: Sentence, chunks: list[EspeakChunk], total_samples: int
) -> list[tuple[str, int, int]]:
    """(word, start sample, end sample) for every word of `sentence`, from espeak's marks.

    espeak marks most words; it skips some ("the" after "of") and marks others twice ("2.5ml").
    Each run of unmarked words shares the time from the previous mark to the next one (or to the
    end of that clause), split in proportion to their lengths.
    """
    anchors: list[tuple[int, int]] = []  # (word index, sample), increasing in both
    for chunk in chunks:
        for mark in chunk.words:
            index = _word_at(sentence, mark.text_position - 1)
            if index is None or (anchors and anchors[-1][0] >= index):
                continue
            anchors.append((index, min(mark.sample, total_samples)))
    if not sentence.words:
        return []
    if not anchors or anchors[0][0] != 0:
        anchors.insert(0, (0, anchors[0][1] if anchors else 0))
    anchors.append((len(sentence.words), total_samples))
    clause_ends = sorted(s for chunk in chunks for s in chunk.clause_ends)
    timed: list[tuple[str, int, int]] = []
    for (first, start), (stop, next_start) in itertools.pairwise(anchors):
        end = min([next_start, *(c for c in clause_ends if c > start)])
        end = max(start, min(end, total_samples))
        group = sentence.words[first:stop]
        weights = [len(span.word) for span in group]
        total = sum(weights)
        at = start
        for span, weight in zip(group, weights, strict=True):
            step = (end - start) * weight // total
            timed.append((span.word, at, at + step))
            at += step
    return timed


def _word_at(sentence: Sentence, position: int) -> int | None:
    found = None
    for index, span in enumerate(sentence.words):
        if span.start <= position:
            found = index
        else:
            break
    return found


class Utterance:
    """An utterance in progress; iterate `events()` once."""

    def __init__(self, text: str, voicing: Voicing, espeak: Espeak) -> None:
        self.voicing = voicing
        self.items = plan(text, voicing.markup)
        self.sentences_total = sum(isinstance(i, Sentence) for i in self.items)
        self.sentences_done = 0
        self._espeak = espeak

    @classmethod
    def of_spans(cls, spans: Sequence[Span], voicing: Voicing, espeak: Espeak) -> Utterance:
        """An utterance of text whose spans carry their own markup options (WebSocket messages)."""
        utterance = cls("", voicing, espeak)
        utterance.items = plan_spans(spans)
        utterance.sentences_total = sum(isinstance(i, Sentence) for i in utterance.items)
        return utterance

    async def events(self) -> AsyncIterator[Audio | Words]:
        """Audio chunks as espeak makes them, each sentence followed by its word timings."""
        source_rate = self._espeak.sample_rate
        resampler = Resampler(source_rate, self.voicing.sampling_rate)
        scale = self.voicing.time_scale
        offset = 0  # samples at the source rate already emitted, stretched
        for item in self.items:
            if isinstance(item, Silence):
                samples = stretched_length(source_rate * item.ms // 1000, scale)
                yield Audio(resampler.convert(b"\0\0" * samples))
                offset += samples
                continue
            chunks: list[EspeakChunk] = []
            produced = 0
            stretcher = Stretcher(scale, source_rate) if scale != 1 else None
            async for chunk in self._espeak.stream(
                item.ssml, self.voicing.voice, self.voicing.rate_wpm
            ):
                chunks.append(chunk)
                produced += len(chunk.pcm) // SAMPLE_WIDTH
                pcm = stretcher.feed(chunk.pcm) if stretcher and chunk.pcm else chunk.pcm
                if pcm:
                    yield Audio(resampler.convert(pcm))
            if stretcher is not None:
                tail = stretcher.finish()
                if tail:
                    yield Audio(resampler.convert(tail))
            self.sentences_done += 1
            timed = word_times(item, chunks, produced)
            if timed:
                yield Words(
                    tuple(w for w, _, _ in timed),
                    tuple(self._seconds(offset, s, scale, source_rate) for _, s, _ in timed),
                    tuple(self._seconds(offset, e, scale, source_rate) for _, _, e in timed),
                )
            offset += stretched_length(produced, scale)

    @staticmethod
    def _seconds(offset: int, sample: int, scale: float, source_rate: int) -> float:
        """Seconds from the start of the utterance to `sample` of the current sentence."""
        return round((offset + stretched_length(sample, scale)) / source_rate, 3)
