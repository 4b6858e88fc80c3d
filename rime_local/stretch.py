"""Time-scale modification of 16-bit mono PCM: longer or shorter audio at the same pitch.

`timeScaleFactor` scales the duration of the audio. espeak's speaking rate can't do that on its
own (it stops at 80 words per minute, and its pauses stretch less than its words), so the engine
stretches espeak's output instead, by WSOLA (waveform-similarity overlap-add): Hann-windowed
frames of 30 ms are laid down every half frame of output, each read from the input near the
point that corresponds to it (output position / factor), at the offset within a quarter frame
whose waveform best continues the previous frame, so the pitch is kept.

A stretch of n input samples gives exactly round(n * factor) output samples, whatever the
chunking, so timings scale by the same factor; the output is the same bytes on every run.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float64]

_FRAME_SECONDS = 0.03


def stretched_length(samples: int, factor: float) -> int:
    """How many samples a stretch of `samples` by `factor` gives."""
    return round(samples * factor)


class Stretcher:
    """One streaming stretch: `feed` chunks as they come, then `finish` once."""

    def __init__(self, factor: float, rate: int) -> None:
        if factor <= 0:
            raise ValueError("the factor must be positive")
        self.factor = factor
        self._n = 2 * max(8, round(rate * _FRAME_SECONDS / 2))
        self._hop = self._n // 2  # output hop; a periodic Hann at half-frame hops sums to 1
        self._tolerance = self._n // 4
        self._window: Samples = np.hanning(self._n + 1)[:-1]
        self._buffer: Samples = np.zeros(0)
        self._buffer_start = 0  # the input index of _buffer[0]
        self._received = 0
        self._frame = 0  # the next frame to lay down
        self._previous: int | None = None  # where the last frame was read from
        # Output from position `_emitted` on, still open to later frames: `_n` samples.
        self._sum: Samples = np.zeros(self._n)
        self._weight: Samples = np.zeros(self._n)
        self._emitted = 0

    def feed(self, pcm: bytes) -> bytes:
        """The output that the input so far settles (16-bit LE mono, like the input)."""
        chunk = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        self._buffer = np.concatenate([self._buffer, chunk])
        self._received += len(chunk)
        # No more than the whole stretch can hold, however the rest of the input ends.
        ceiling = int(self._received * self.factor)
        out: list[Samples] = []
        while self._needs(self._frame) <= self._received and self._end_of(self._frame) <= ceiling:
            out.append(self._lay_frame())
        return _pcm(out)

    def finish(self) -> bytes:
        """The rest of the output, after the last input; the stretch is then over."""
        total = stretched_length(self._received, self.factor)
        out: list[Samples] = []
        while self._emitted < total:
            out.append(self._lay_frame())
        return _pcm(out, keep=total - (self._emitted - sum(len(o) for o in out)))

    def _nominal(self, frame: int) -> int:
        return round(frame * self._hop / self.factor)

    def _needs(self, frame: int) -> int:
        """The input index up to which `frame` reads (the template included)."""
        end = self._nominal(frame) + self._tolerance + self._n
        if self._previous is not None:
            end = max(end, self._previous + self._hop + self._n)
        return end

    def _end_of(self, frame: int) -> int:
        """The output position that laying down `frame` settles."""
        return (frame + 1) * self._hop

    def _read(self, start: int, stop: int) -> Samples:
        """Input samples [start, stop), zeros where there is no input (yet)."""
        out: Samples = np.zeros(stop - start)
        lo = max(start, self._buffer_start)
        hi = min(stop, self._buffer_start + len(self._buffer))
        if hi > lo:
            out[lo - start : hi - start] = self._buffer[
                lo - self._buffer_start : hi - self._buffer_start
            ]
        return out

    def _lay_frame(self) -> Samples:
        """Lay down the next frame; return the output it settles."""
        nominal = self._nominal(self._frame)
        if self._previous is None:
            start = nominal
        else:
            lo = max(0, nominal - self._tolerance)
            hi = nominal + self._tolerance
            template = self._read(self._previous + self._hop, self._previous + self._hop + self._n)
            candidates = self._read(lo, hi + self._n)
            start = lo + int(np.argmax(np.correlate(candidates, template, mode="valid")))
        self._sum += self._window * self._read(start, start + self._n)
        self._weight += self._window
        self._previous = start
        self._frame += 1
        settled = np.divide(
            self._sum[: self._hop],
            self._weight[: self._hop],
            out=np.zeros(self._hop),
            where=self._weight[: self._hop] > 1e-9,
        )
        self._sum = np.concatenate([self._sum[self._hop :], np.zeros(self._hop)])
        self._weight = np.concatenate([self._weight[self._hop :], np.zeros(self._hop)])
        self._emitted += self._hop
        self._forget_before(min(start + self._hop, self._nominal(self._frame) - self._tolerance))
        return settled

    def _forget_before(self, index: int) -> None:
        drop = index - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start = index


def _pcm(parts: list[Samples], keep: int | None = None) -> bytes:
    if not parts:
        return b""
    samples = np.concatenate(parts)
    if keep is not None:
        samples = samples[: max(0, keep)]
    return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()
