"""Synthesis of one segment: limiter -> Rime HTTP stream -> checks, under the retry policy.

Rime has no idempotency key: every attempt whose audio started to arrive was generated and is
billed, even when the stream was then cut or the audio was rejected. Those attempts are reported
with `billed=True` so the job table can count what the account paid for.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pipeline.limits import Limiter
from pipeline.retry import DEFAULT_POLICY, RetryPolicy
from pipeline.rime.checks import duration
from pipeline.rime.errors import RateLimited, RimeError, StreamCut, TransientError
from pipeline.rime.params import AudioFormat, TtsRequest

# What we ask Rime for: raw 16-bit PCM is lossless, needs no decoder and its length is its duration.
REQUEST_FORMAT = AudioFormat.PCM
_PAUSE = re.compile(r"<(\d+)>")


class AudioRejected(StreamCut):
    """Audio arrived whole but cannot be the speech of its text (implausibly long or short)."""


class Synthesizer(Protocol):
    """Anything that turns one request into audio bytes (Rime's HTTP API is the one we use)."""

    async def synthesize(self, req: TtsRequest, fmt: AudioFormat = ...) -> bytes: ...


@dataclass(frozen=True)
class Attempt:
    """One try at a segment, as the job table records it."""

    number: int
    error: str | None  # None when the attempt succeeded
    billed_chars: int  # characters Rime billed for this attempt (0 if it never generated)
    retryable: bool = False  # a transient error: the policy may try again


@dataclass(frozen=True)
class SynthResult:
    """The accepted audio of one segment."""

    pcm: bytes
    sampling_rate: int
    seconds: float
    attempts: int


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
) -> SynthResult:
    """Synthesize `req` with retries; every attempt is reported to `on_attempt` as it ends."""
    sampling_rate = req.voice.effective_sampling_rate
    number = 0
    async for attempt in policy.retrying():
        with attempt:
            number += 1
            try:
                async with limiter.slot():
                    pcm = await client.synthesize(req, REQUEST_FORMAT)
                seconds = check_plausible(pcm, sampling_rate, req)
            except RimeError as exc:
                if isinstance(exc, RateLimited):
                    await limiter.on_rate_limited()
                billed = len(req.text) if exc.billed else 0
                on_attempt(Attempt(number, str(exc), billed, isinstance(exc, TransientError)))
                raise
            await limiter.on_success()
            on_attempt(Attempt(number, None, len(req.text)))
            return SynthResult(pcm, sampling_rate, seconds, number)
    raise AssertionError("unreachable: the retry policy re-raises the last error")
