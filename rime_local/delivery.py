"""From a synthesis to bytes on the wire: encoding, added latency, pacing, mid-stream faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from rime_local.codecs import Encoding, make_encoder
from rime_local.config import EngineConfig
from rime_local.synthesis import SAMPLE_WIDTH, Audio, Utterance, Words


@dataclass(frozen=True)
class Encoded:
    """Encoded audio bytes ready to send."""

    data: bytes


@dataclass(frozen=True)
class Delivered:
    """The end of a synthesis: how much audio it carried."""

    audio_seconds: float


async def deliver(
    utterance: Utterance,
    fmt: Encoding,
    config: Callable[[], EngineConfig],
    padding_seconds: float = 0.0,
) -> AsyncIterator[Encoded | Words | Delivered]:
    """Encoded audio and word timings of one utterance, with the configured TTFB and pacing.

    `padding_seconds` of silence follow the speech (the implausible-audio fault).
    """
    rate = utterance.voicing.sampling_rate
    encoder = make_encoder(fmt, rate)
    started = time.monotonic()
    ttfb = config().ttfb_ms / 1000
    first = True
    sent_seconds = 0.0
    finished = False
    try:
        async for event in _padded(utterance.events(), rate, padding_seconds):
            if isinstance(event, Words):
                yield event
                continue
            assert isinstance(event, Audio)
            pacing = config().pacing
            if pacing > 0:
                # No faster than `pacing` x real time: this chunk may start at sent/pacing.
                delay = sent_seconds / pacing - (time.monotonic() - started - ttfb)
                if delay > 0:
                    await asyncio.sleep(delay)
            sent_seconds += len(event.pcm) / SAMPLE_WIDTH / rate
            data = await encoder.push(event.pcm)
            if data:
                if first:
                    first = False
                    await _wait_until(started + ttfb)
                yield Encoded(data)
        tail = await encoder.finish()
        finished = True
        if tail:
            if first:
                await _wait_until(started + ttfb)
            yield Encoded(tail)
        yield Delivered(sent_seconds)
    finally:
        if not finished:
            await encoder.abort()


async def _padded(
    events: AsyncIterator[Audio | Words], rate: int, seconds: float
) -> AsyncIterator[Audio | Words]:
    async for event in events:
        yield event
    samples = round(seconds * rate)
    # A second at a time, so pacing and the encoders see chunks of the usual size.
    while samples > 0:
        step = min(samples, rate)
        yield Audio(b"\0" * SAMPLE_WIDTH * step)
        samples -= step


async def _wait_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
