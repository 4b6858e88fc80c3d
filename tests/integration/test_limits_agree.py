"""The local and the shared limiter apply one rule: same outcomes, same caps; same takes, waits.

Each example drives a `LocalLimiter` and two `RedisLimiter`s of one namespace (two workers) with
the same sequence, on one injected clock in place of Redis `TIME`, against the real Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.limits import LimitConfig, LocalLimiter
from pipeline.limits.shared import RedisLimiter
from pipeline.rime.errors import RateLimited
from tests.fixtures.clock import FakeClock

pytestmark = pytest.mark.redis

# Real Redis round trips: fewer examples than a pure property, and no deadline.
AGREEMENT = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Clock steps: often none, often a cool-down's worth exactly, else anything up to a few.
steps = st.one_of(
    st.just(0.0),
    st.sampled_from([0.5, 1.0, 2.0]),
    st.floats(min_value=0.0, max_value=6.0, allow_nan=False, allow_infinity=False),
)
OUTCOMES = ["success", "429", "429 inside a slot"]


def _namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def _refused(limiter: LocalLimiter | RedisLimiter) -> None:
    """A request refused with 429 inside its slot, then reported, as synthesis does."""
    try:
        async with limiter.slot():
            raise RateLimited("too many concurrent requests")
    except RateLimited:
        await limiter.on_rate_limited()


async def _admits(limiter: RedisLimiter, cap: int) -> bool:
    """Whether `cap` slots are admitted at once and one more is not."""
    async with AsyncExitStack() as held:
        for _ in range(cap):
            await asyncio.wait_for(held.enter_async_context(limiter.slot()), 2.0)
        try:
            await asyncio.wait_for(held.enter_async_context(limiter.slot()), 0.05)
        except TimeoutError:
            return True
        return False


@AGREEMENT
@given(
    ceiling=st.integers(1, 12),
    probe_after=st.integers(1, 4),
    cooldown=st.sampled_from([0.5, 1.0, 2.0]),
    script=st.lists(
        st.tuples(st.sampled_from(OUTCOMES), st.integers(0, 1), steps), min_size=1, max_size=60
    ),
)
def test_the_adaptive_cap_is_the_same_locally_and_in_redis(
    redis_url: str,
    ceiling: int,
    probe_after: int,
    cooldown: float,
    script: list[tuple[str, int, float]],
) -> None:
    config = LimitConfig(
        concurrency=ceiling, adaptive=True, probe_after=probe_after, cooldown_seconds=cooldown
    )

    async def scenario() -> None:
        clock = FakeClock()
        local = LocalLimiter(config, clock=clock)
        namespace = _namespace()
        async with (
            RedisLimiter(redis_url, config, namespace, poll_seconds=0.05, clock=clock) as one,
            RedisLimiter(redis_url, config, namespace, poll_seconds=0.05, clock=clock) as two,
        ):
            assert local.cap == await one.cap()
            for step, (outcome, worker, elapsed) in enumerate(script):
                clock.now += elapsed
                shared = (one, two)[worker]
                if outcome == "success":
                    await local.on_success()
                    await shared.on_success()
                elif outcome == "429":
                    await local.on_rate_limited()
                    await shared.on_rate_limited()
                else:
                    await _refused(local)
                    await _refused(shared)
                caps = (local.cap, await one.cap(), await two.cap())
                assert caps[1:] == (caps[0], caps[0]), f"after step {step}: {caps}"
            assert await _admits(two, local.cap)

    asyncio.run(scenario())


@AGREEMENT
@given(
    per_minute=st.one_of(st.integers(1, 1200), st.sampled_from([1, 6, 7, 60, 600])),
    script=st.lists(
        st.tuples(st.integers(0, 1), st.one_of(st.just(0.0), steps, st.floats(0.0, 120.0))),
        min_size=1,
        max_size=60,
    ),
)
def test_the_budget_is_the_same_locally_and_in_redis(
    redis_url: str, per_minute: int, script: list[tuple[int, float]]
) -> None:
    config = LimitConfig(concurrency=1, requests_per_minute=per_minute, adaptive=False)

    async def scenario() -> None:
        # Two clocks that start together: each limiter sleeps its waits on its own.
        mine, theirs = FakeClock(), FakeClock()
        local = LocalLimiter(config, clock=mine, sleep=mine.sleep)
        namespace = _namespace()

        def shared() -> RedisLimiter:
            return RedisLimiter(redis_url, config, namespace, clock=theirs, sleep=theirs.sleep)

        async with shared() as one, shared() as two:
            for step, (worker, elapsed) in enumerate(script):
                mine.now += elapsed
                theirs.now += elapsed
                async with local.slot():
                    pass
                async with (one, two)[worker].slot():
                    pass
                assert theirs.slept == mine.slept, f"after step {step}"
                assert theirs.now == mine.now, f"after step {step}"

    asyncio.run(scenario())
