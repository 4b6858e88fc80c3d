"""The in-process limiter: the cap holds under load, the budget paces, feedback adapts the cap."""

from __future__ import annotations

import asyncio
import time

from pipeline.limits import LimitConfig, LocalLimiter


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
    limiter = LocalLimiter(LimitConfig(concurrency=4, adaptive=False))
    assert await _hammer(limiter, 40, 0.005) == 4
    assert limiter.peak_in_flight == 4


async def test_requests_per_minute_budget_paces_after_the_burst() -> None:
    # 600/min = 10/s with a burst of 100: 110 requests need about one second past the burst.
    limiter = LocalLimiter(LimitConfig(concurrency=50, requests_per_minute=600, adaptive=False))
    started = time.monotonic()
    await _hammer(limiter, 110, 0.0)
    assert 0.8 < time.monotonic() - started < 2.5


async def test_adaptive_limiter_shrinks_its_cap() -> None:
    limiter = LocalLimiter(LimitConfig(concurrency=12, adaptive=True, probe_after=2))
    assert limiter.cap == 6
    await limiter.on_rate_limited()
    assert limiter.cap == 3
    assert await _hammer(limiter, 20, 0.003) == 3
    for _ in range(4):
        await limiter.on_success()
    assert limiter.cap == 5


def test_local_limiter_feedback_is_awaited_and_adapts_the_cap() -> None:
    async def scenario() -> list[int]:
        limiter = LocalLimiter(LimitConfig(concurrency=8, adaptive=True, probe_after=2))
        caps = [limiter.cap]
        await limiter.on_rate_limited()
        caps.append(limiter.cap)
        for _ in range(2):
            await limiter.on_success()
        caps.append(limiter.cap)
        await limiter.on_rate_limited()  # the probe failed
        caps.append(limiter.cap)
        return caps

    assert asyncio.run(scenario()) == [4, 2, 3, 2]


def test_local_limiter_ignores_feedback_unless_adaptive() -> None:
    async def scenario() -> int:
        limiter = LocalLimiter(LimitConfig(concurrency=4, adaptive=False))
        await limiter.on_rate_limited()
        return limiter.cap

    assert asyncio.run(scenario()) == 4


async def test_a_waiter_cancelled_as_it_is_woken_passes_the_free_slot_on() -> None:
    # A release wakes one waiter only; cancelled before it runs, it must wake the next one.
    limiter = LocalLimiter(LimitConfig(concurrency=1, adaptive=False))

    async def waiter(got: asyncio.Event) -> None:
        async with limiter.slot():
            got.set()

    held = limiter.slot()
    await held.__aenter__()
    first_got, second_got = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(waiter(first_got))
    second = asyncio.create_task(waiter(second_got))
    await asyncio.sleep(0.01)  # both are waiting now
    await held.__aexit__(None, None, None)  # wakes the first waiter, which has not run yet
    first.cancel()
    async with asyncio.timeout(2):
        await second_got.wait()
    await second
    assert first.cancelled() and not first_got.is_set()
