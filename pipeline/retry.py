"""The pipeline's retry policy for one Rime request, named once and built from tenacity parts.

Retried: 429 (waiting at least its Retry-After), 5xx, connect and read errors, timeouts and cut
streams -- everything the client raises as `TransientError`. Not retried: 400 and 401, which fail
at once with the server's message. Attempts and total time are both bounded.

A 429 is not a failure of the request but a "not now" from the account's limit: the limiter
hears of it and lowers its cap (adaptive mode), and the request waits and tries again without
using up `max_attempts`, which is meant for real failures. 429s have their own, generous bound
(`max_rate_limited`), and the time bound holds for both. Each kind backs off on its own count.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from pipeline.rime.errors import RateLimited, TransientError


def _failure(retry_state: RetryCallState) -> BaseException | None:
    outcome = retry_state.outcome
    return outcome.exception() if outcome is not None and outcome.failed else None


@dataclass
class FailureCounts:
    """The failed attempts of one request so far, 429s apart from the rest.

    Tenacity asks the wait and the stop about the same attempt; each attempt is counted once.
    """

    _rate_limited: dict[int, bool] = field(default_factory=dict)

    def observe(self, retry_state: RetryCallState) -> tuple[int, int]:
        """(failures, 429s) up to and including the attempt `retry_state` describes."""
        exc = _failure(retry_state)
        if exc is not None:
            self._rate_limited.setdefault(retry_state.attempt_number, isinstance(exc, RateLimited))
        limited = sum(self._rate_limited.values())
        return len(self._rate_limited) - limited, limited


class WaitRetryAfter(wait_base):
    """Wait as `fallback` does, but never less than a 429's Retry-After."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self.fallback(retry_state))
        exc = _failure(retry_state)
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return max(wait, exc.retry_after)
        return wait


class _Backoff(wait_base):
    """Exponential backoff with jitter, on the count of the failure's own kind."""

    def __init__(self, policy: RetryPolicy, counts: FailureCounts) -> None:
        self.policy, self.counts = policy, counts

    def __call__(self, retry_state: RetryCallState) -> float:
        failures, limited = self.counts.observe(retry_state)
        n = limited if isinstance(_failure(retry_state), RateLimited) else failures
        policy = self.policy
        exponential = min(policy.max_wait, policy.initial_wait * 2.0 ** max(0, n - 1))
        return exponential + random.uniform(0, policy.jitter)


class _Stop(stop_base):
    """Stop after `max_attempts` real failures, `max_rate_limited` 429s or `max_seconds`."""

    def __init__(self, policy: RetryPolicy, counts: FailureCounts) -> None:
        self.policy, self.counts = policy, counts

    def __call__(self, retry_state: RetryCallState) -> bool:
        failures, limited = self.counts.observe(retry_state)
        policy = self.policy
        return (
            failures >= policy.max_attempts
            or limited >= policy.max_rate_limited
            or (retry_state.seconds_since_start or 0.0) >= policy.max_seconds
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one segment before it is marked failed."""

    max_attempts: int = 8
    max_seconds: float = 600.0
    initial_wait: float = 0.5
    max_wait: float = 30.0
    jitter: float = 1.0
    # 429s one request may meet before it fails; they do not count towards max_attempts.
    max_rate_limited: int = 100

    def wait(self, counts: FailureCounts | None = None) -> wait_base:
        """Exponential backoff with jitter, floored by Retry-After."""
        return WaitRetryAfter(_Backoff(self, counts or FailureCounts()))

    def retrying(
        self, before_sleep: Callable[[RetryCallState], None] | None = None
    ) -> AsyncRetrying:
        """A tenacity controller for one request; re-raises the last error when it gives up."""
        counts = FailureCounts()
        return AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=_Stop(self, counts),
            wait=self.wait(counts),
            before_sleep=before_sleep,
            reraise=True,
        )

    @property
    def longest_seconds(self) -> float:
        """Upper bound on the time one segment can spend retrying (for visibility timeouts)."""
        return self.max_seconds + self.max_wait


DEFAULT_POLICY = RetryPolicy()
