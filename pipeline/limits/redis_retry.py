"""Waiting out a Redis that is not answering: which errors mean that, and the backoff.

`redis_call` is the policy of the shared limiter (asyncio code).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.exceptions
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base

T = TypeVar("T")

# Errors that mean "Redis is not reachable right now" (down, restarting, loading its data).
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


def _log_retry(log: logging.Logger) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        # The error's type only: its text can carry the host, and a URL can carry a password.
        log.warning("Redis is not answering (%s); retrying in %.2f s", type(exc).__name__, wait)

    return before_sleep


def _policy(log: logging.Logger, stop: stop_base) -> dict[str, Any]:
    return {
        "retry": retry_if_exception_type(REDIS_DOWN),
        # wait_exponential_jitter's parameters differ across tenacity versions; these do not.
        "wait": wait_exponential(multiplier=0.05, max=2.0) + wait_random(0, 0.2),
        "stop": stop,
        "before_sleep": _log_retry(log),
        "reraise": True,
    }


async def redis_call(
    call: Callable[[], Awaitable[T]], log: logging.Logger, stop: stop_base = stop_never
) -> T:
    """`await call()`, retried while Redis is down (forever unless `stop` says otherwise,
    counted from the first retry), logging to `log`."""
    try:
        # The first try runs bare: tenacity's machinery costs more than a Redis round trip,
        # and every slot makes several.
        return await call()
    except REDIS_DOWN:
        pass
    async for attempt in AsyncRetrying(**_policy(log, stop)):
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity re-raises the last error")
