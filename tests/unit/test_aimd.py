"""The pure limit arithmetic (AIMD, token bucket) and the in-process limiter's feedback."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.limits import Aimd, LimitConfig, LocalLimiter, TokenBucket, bucket_capacity


def test_aimd_halves_on_429_down_to_one() -> None:
    aimd = Aimd(ceiling=10, probe_after=3)
    assert [aimd.rate_limited() for _ in range(5)] == [5, 2, 1, 1, 1]


def test_aimd_grows_by_one_after_a_streak_and_stops_at_the_ceiling() -> None:
    aimd = Aimd(ceiling=4, probe_after=3)
    aimd.rate_limited()  # 2
    caps = [aimd.success() for _ in range(9)]
    assert caps == [2, 2, 3, 3, 3, 4, 4, 4, 4]


def test_a_429_breaks_the_streak() -> None:
    aimd = Aimd(ceiling=8, probe_after=3)
    aimd.rate_limited()  # 4
    aimd.success()
    aimd.success()
    aimd.rate_limited()  # 2, streak gone
    assert [aimd.success() for _ in range(3)] == [2, 2, 3]


@given(st.integers(1, 64), st.integers(1, 10), st.lists(st.booleans(), max_size=200))
def test_aimd_cap_stays_between_one_and_the_ceiling(
    ceiling: int, probe_after: int, outcomes: list[bool]
) -> None:
    aimd = Aimd(ceiling, probe_after)
    for ok in outcomes:
        before = aimd.cap
        cap = aimd.success() if ok else aimd.rate_limited()
        assert 1 <= cap <= ceiling
        assert cap in ({before, before + 1} if ok else {max(1, before // 2)})


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(per_minute=60, clock=clock)
    assert bucket_capacity(60) == 10.0
    assert [bucket.take() for _ in range(10)] == [0.0] * 10
    assert bucket.take() == pytest.approx(1.0)  # one a second
    clock.now = 0.5
    assert bucket.take() == pytest.approx(0.5)
    clock.now = 1.0
    assert bucket.take() == 0.0
    clock.now = 100.0  # refills to the burst, no further
    assert sum(1 for _ in range(20) if bucket.take() == 0.0) == 10


def test_bucket_capacity_is_ten_seconds_and_at_least_one() -> None:
    assert bucket_capacity(600) == 100.0
    assert bucket_capacity(3) == 1.0


def test_local_limiter_feedback_is_awaited_and_adapts_the_cap() -> None:
    async def scenario() -> list[int]:
        limiter = LocalLimiter(LimitConfig(concurrency=4, adaptive=True, probe_after=2))
        caps = [limiter.cap]
        await limiter.on_rate_limited()
        caps.append(limiter.cap)
        for _ in range(2):
            await limiter.on_success()
        caps.append(limiter.cap)
        return caps

    assert asyncio.run(scenario()) == [4, 2, 3]


def test_local_limiter_ignores_feedback_unless_adaptive() -> None:
    async def scenario() -> int:
        limiter = LocalLimiter(LimitConfig(concurrency=4))
        await limiter.on_rate_limited()
        return limiter.cap

    assert asyncio.run(scenario()) == 4
