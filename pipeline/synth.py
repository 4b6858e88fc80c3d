"""Synthesis of one segment: limiter -> Rime HTTP stream -> checks, under the retry policy.

A segment whose words must be timed (its script asks for captions) is synthesized by a
`TimedSynthesizer` instead (Rime's /ws3 WebSocket, the only API that returns word timestamps),
under the same limiter, retries, checks and billing.

Rime has no idempotency key: every attempt whose audio started to arrive was generated and is
billed, even when the stream was then cut or the audio was rejected. The client reports the
first audio byte of each attempt (`on_audio`) as it arrives, so the job table counts what the
account paid for even when the process dies a moment later.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from pipeline.limits import Limiter
from pipeline.retry import DEFAULT_POLICY, RetryPolicy
from pipeline.rime.checks import duration
from pipeline.rime.errors import RateLimited, RimeError, StreamCut, TransientError
from pipeline.rime.events import WordTimestamp
from pipeline.rime.params import AudioFormat, TtsRequest
from pipeline.rime.utterance import Synthesis

# What we ask Rime for: raw 16-bit PCM is lossless, needs no decoder and its length is its duration.
REQUEST_FORMAT = AudioFormat.PCM
_PAUSE = re.compile(r"<(\d+)>")


class AudioRejected(StreamCut):
    """Audio arrived whole but cannot be the speech of its text (implausibly long or short)."""


class Synthesizer(Protocol):
    """Anything that turns one request into audio bytes (Rime's HTTP API is the one we use)."""

    async def synthesize(
        self,
        req: TtsRequest,
        fmt: AudioFormat = ...,
        *,
        on_audio: Callable[[], None] | None = None,
    ) -> bytes:
        """The audio of `req`; `on_audio` is called once, as its first audio byte arrives."""
        ...


class TimedSynthesizer(Protocol):
    """Anything that turns one request into audio and its word times (Rime's /ws3)."""

    async def synthesize_timed(
        self,
        req: TtsRequest,
        fmt: AudioFormat = ...,
        *,
        on_audio: Callable[[], None] | None = None,
    ) -> Synthesis:
        """The audio of `req` with its words timed from its start; `on_audio` as above."""
        ...


@dataclass(frozen=True)
class Attempt:
    """One try at a segment, as the job table records it."""

    number: int
    error: str | None  # None when the attempt succeeded
    billed_chars: int  # characters Rime billed: all of them once audio began to arrive, else 0
    retryable: bool = False  # a transient error: the policy may try again


@dataclass(frozen=True)
class SynthResult:
    """The accepted audio of one segment."""

    pcm: bytes
    sampling_rate: int
    seconds: float
    attempts: int
    words: tuple[WordTimestamp, ...] | None = None  # when synthesized with word times


def plausible_seconds(req: TtsRequest) -> tuple[float, float]:
    """Bounds on a sane duration for `req`: loose enough for any voice and speed."""
    pauses = sum(int(ms) for ms in _PAUSE.findall(req.text)) / 1000.0
    spoken = _PAUSE.sub("", req.text)
    words = max(1, len(spoken.split()))
    return 0.04 * words, 3.0 + 0.5 * len(spoken) + pauses


def check_plausible(pcm: bytes, sampling_rate: int, req: TtsRequest) -> float:
    """The audio's duration in seconds; AudioRejected when it can't be the speech of `req`."""
    seconds = duration(pcm, REQUEST_FORMAT, sampling_rate) or 0.0
    low, high = plausible_seconds(req)
    if not low <= seconds <= high:
        raise AudioRejected(
            f"{seconds:.2f}s of audio for {len(req.text)} characters "
            f"(expected {low:.2f}s to {high:.0f}s)"
        )
    return seconds


async def synthesize_segment(
    client: Synthesizer,
    limiter: Limiter,
    req: TtsRequest,
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    on_attempt: Callable[[Attempt], None] = lambda _: None,
    on_slot: Callable[[int], Awaitable[None]] | None = None,
    on_audio: Callable[[], None] | None = None,
    timed: TimedSynthesizer | None = None,
) -> SynthResult:
    """Synthesize `req` with retries; every attempt is reported to `on_attempt` as it ends.

    `on_slot(attempt number)` runs once a slot of the limiter is held, just before the request
    (the place to claim the work: a claim is never held while waiting for a slot); what it
    raises ends the synthesis. `on_audio` is called at the first audio byte of each attempt.
    With `timed`, the request goes to it instead of `client`, and the result has word times.
    """
    sampling_rate = req.voice.effective_sampling_rate
    number = 0
    audio_of: set[int] = set()  # the attempts whose audio began to arrive

    def audio_began() -> None:
        audio_of.add(number)
        if on_audio is not None:
            on_audio()

    async for attempt in policy.retrying():
        with attempt:
            number += 1
            try:
                async with limiter.slot():
                    if on_slot is not None:
                        await on_slot(number)
                    words: tuple[WordTimestamp, ...] | None = None
                    if timed is None:
                        pcm = await client.synthesize(req, REQUEST_FORMAT, on_audio=audio_began)
                    else:
                        got = await timed.synthesize_timed(
                            req, REQUEST_FORMAT, on_audio=audio_began
                        )
                        pcm, words = got.audio, got.words
                seconds = check_plausible(pcm, sampling_rate, req)
            except RimeError as exc:
                if isinstance(exc, RateLimited):
                    await limiter.on_rate_limited()
                billed = len(req.text) if number in audio_of else 0
                on_attempt(Attempt(number, str(exc), billed, isinstance(exc, TransientError)))
                raise
            await limiter.on_success()
            on_attempt(Attempt(number, None, len(req.text)))
            return SynthResult(pcm, sampling_rate, seconds, number, words)
    raise AssertionError("unreachable: the retry policy re-raises the last error")
