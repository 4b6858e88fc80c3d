"""The retry policy as pure strategies over a real tenacity retry state, without sleeping."""

from __future__ import annotations

import asyncio

import pytest
from tenacity import RetryCallState

from pipeline.retry import FailureCounts, RetryPolicy, WaitRetryAfter
from pipeline.rime.errors import BadRequest, RateLimited, ServerError, StreamCut


def _state(policy: RetryPolicy, attempt: int, exc: BaseException) -> RetryCallState:
    state = RetryCallState(policy.retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def _waits(policy: RetryPolicy, errors: list[BaseException]) -> list[float]:
    """The waits after each of `errors` in turn, as one request's controller computes them."""
    wait, waits = policy.wait(FailureCounts()), []
    for number, exc in enumerate(errors, start=1):
        waits.append(wait(_state(policy, number, exc)))
    return waits


def test_wait_is_at_least_retry_after() -> None:
    policy = RetryPolicy(initial_wait=0.1, max_wait=1.0, jitter=0.0)
    wait = policy.wait()
    assert wait(_state(policy, 1, RateLimited("busy", retry_after=7.5))) == 7.5
    # Without Retry-After the exponential backoff applies.
    assert wait(_state(policy, 1, RateLimited("busy"))) == pytest.approx(0.1)


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(initial_wait=0.5, max_wait=4.0, jitter=0.0)
    waits = _waits(policy, [ServerError("x", status=503) for _ in range(6)])
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_retry_after_shorter_than_backoff_keeps_backoff() -> None:
    policy = RetryPolicy(initial_wait=2.0, max_wait=8.0, jitter=0.0)
    busy = [RateLimited("busy", retry_after=1.0) for _ in range(3)]
    assert _waits(policy, busy)[-1] == pytest.approx(8.0)
    assert WaitRetryAfter(policy.wait())(
        _state(policy, 1, RateLimited("busy", retry_after=3.0))
    ) == pytest.approx(3.0)


def test_429s_and_real_failures_back_off_each_on_their_own_count() -> None:
    policy = RetryPolicy(initial_wait=1.0, max_wait=64.0, jitter=0.0)
    busy, down = RateLimited("busy"), ServerError("down", status=503)
    waits = _waits(policy, [busy, busy, busy, down, busy, down])
    assert waits == [1.0, 2.0, 4.0, 1.0, 8.0, 2.0]


async def _run(policy: RetryPolicy, errors: list[BaseException]) -> int:
    calls = 0
    async for attempt in policy.retrying():
        with attempt:
            calls += 1
            if errors:
                raise errors.pop(0)
    return calls


def test_transient_errors_are_retried_until_success() -> None:
    policy = RetryPolicy(initial_wait=0.001, max_wait=0.001, jitter=0.0)
    errors: list[BaseException] = [ServerError("a", status=500), StreamCut("b")]
    assert asyncio.run(_run(policy, errors)) == 3


def test_permanent_errors_fail_at_once() -> None:
    policy = RetryPolicy(initial_wait=0.001, max_wait=0.001, jitter=0.0)
    with pytest.raises(BadRequest):
        asyncio.run(_run(policy, [BadRequest("no speaker", status=400), StreamCut("never")]))


def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    policy = RetryPolicy(max_attempts=3, initial_wait=0.001, max_wait=0.001, jitter=0.0)
    errors: list[BaseException] = [ServerError(str(i), status=500) for i in range(5)]
    with pytest.raises(ServerError, match="2"):
        asyncio.run(_run(policy, errors))
    assert len(errors) == 2


def test_429s_do_not_use_up_the_attempts_meant_for_real_failures() -> None:
    policy = RetryPolicy(max_attempts=3, initial_wait=0.0, max_wait=0.0, jitter=0.0)
    errors: list[BaseException] = [RateLimited("busy") for _ in range(20)]
    errors += [ServerError("a", status=500), ServerError("b", status=500)]
    assert asyncio.run(_run(policy, errors)) == 23


def test_429s_have_their_own_bound() -> None:
    policy = RetryPolicy(max_rate_limited=5, initial_wait=0.0, max_wait=0.0, jitter=0.0)
    errors: list[BaseException] = [RateLimited(str(i)) for i in range(10)]
    with pytest.raises(RateLimited, match="4"):
        asyncio.run(_run(policy, errors))
    assert len(errors) == 5
