"""The in-process limiter: the cap holds under load, the budget paces, AIMD shrinks and grows."""

from __future__ import annotations

import asyncio
import time

from pipeline.limits import Aimd, LimitConfig, LocalLimiter, TokenBucket


async def _hammer(limiter: LocalLimiter, tasks: int, hold: float) -> int:
    current = peak = 0

    async def one() -> None:
        nonlocal current, peak
        async with limiter.slot():
            current += 1
            peak = max(peak, current)
            await asyncio.sleep(hold)
            current -= 1

    await asyncio.gather(*(one() for _ in range(tasks)))
    return peak


async def test_concurrency_cap_is_reached_and_never_exceeded() -> None:
    limiter = LocalLimiter(LimitConfig(concurrency=4))
    assert await _hammer(limiter, 40, 0.005) == 4
    assert limiter.peak_in_flight == 4


async def test_requests_per_minute_budget_paces_after_the_burst() -> None:
    # 600/min = 10/s with a burst of 100: 110 requests need about one second past the burst.
    limiter = LocalLimiter(LimitConfig(concurrency=50, requests_per_minute=600))
    started = time.monotonic()
    await _hammer(limiter, 110, 0.0)
    assert 0.8 < time.monotonic() - started < 2.5


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(60, clock=lambda: now[0])  # one a second, burst of 10
    assert [bucket.take() for _ in range(10)] == [0.0] * 10
    assert bucket.take() == 1.0
    now[0] += 2.5
    assert bucket.take() == 0.0
    assert bucket.take() == 0.0
    assert 0.0 < bucket.take() <= 1.0


def test_aimd_halves_on_429_and_probes_back_up() -> None:
    aimd = Aimd(ceiling=16, probe_after=3)
    assert aimd.cap == 8  # half the ceiling
    assert aimd.rate_limited() == 4
    assert aimd.rate_limited() == 2
    assert [aimd.success() for _ in range(6)] == [2, 2, 3, 3, 3, 4]
    for _ in range(100):
        aimd.success()
    assert aimd.cap == 16
    for _ in range(10):
        aimd.rate_limited()
    assert aimd.cap == 1


async def test_adaptive_limiter_shrinks_its_cap() -> None:
    limiter = LocalLimiter(LimitConfig(concurrency=12, adaptive=True, probe_after=2))
    assert limiter.cap == 6
    await limiter.on_rate_limited()
    assert limiter.cap == 3
    assert await _hammer(limiter, 20, 0.003) == 3
    for _ in range(4):
        await limiter.on_success()
    assert limiter.cap == 5
