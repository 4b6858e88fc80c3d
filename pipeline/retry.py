"""The pipeline's retry policy for one Rime request, named once and built from tenacity parts.

Retried: 429 (waiting at least its Retry-After), 5xx, connect and read errors, timeouts and cut
streams -- everything the client raises as `TransientError`. Not retried: 400 and 401, which fail
at once with the server's message. Attempts and total time are both bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from pipeline.rime.errors import RateLimited, TransientError


class WaitRetryAfter(wait_base):
    """Wait as `fallback` does, but never less than a 429's Retry-After."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = self.fallback(retry_state)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return max(wait, exc.retry_after)
        return wait


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one segment before it is marked failed."""

    max_attempts: int = 8
    max_seconds: float = 600.0
    initial_wait: float = 0.5
    max_wait: float = 30.0
    jitter: float = 1.0

    def wait(self) -> wait_base:
        """Exponential backoff with jitter, floored by Retry-After."""
        return WaitRetryAfter(
            wait_exponential(multiplier=self.initial_wait, max=self.max_wait)
            + wait_random(0, self.jitter)
        )

    def retrying(
        self, before_sleep: Callable[[RetryCallState], None] | None = None
    ) -> AsyncRetrying:
        """A tenacity controller for one request; re-raises the last error when it gives up."""
        return AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_seconds),
            wait=self.wait(),
            before_sleep=before_sleep,
            reraise=True,
        )

    @property
    def longest_seconds(self) -> float:
        """Upper bound on the time one segment can spend retrying (for visibility timeouts)."""
        return self.max_seconds + self.max_wait


DEFAULT_POLICY = RetryPolicy()
