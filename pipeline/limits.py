"""Limits on requests to Rime: a concurrency cap and an optional requests-per-minute budget.

`Limiter` is the one interface every executor uses. `LocalLimiter` holds the limits in this
process (the embedded executor); the Celery workers back the same interface with Redis so that
every worker on every host shares one cap (`pipeline.redis_limits.RedisLimiter`).

Adaptive mode is for accounts shared with live traffic: on a 429 the cap halves, then grows by
one after `probe_after` successes in a row (additive increase, multiplicative decrease), never
above the configured cap and never below one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class LimitConfig:
    """The limits a user configures."""

    concurrency: int = 5  # Rime's pay-as-you-go plan: 5 concurrent generations
    requests_per_minute: int | None = None
    adaptive: bool = False
    probe_after: int = 10  # successes in a row before an adaptive cap grows by one


class Limiter(Protocol):
    """Admission to send one request, plus feedback from its outcome."""

    def slot(self) -> AbstractAsyncContextManager[None]:
        """An async context manager held while one request is in flight."""
        ...

    # Async because a shared limiter records the outcome in Redis; awaiting it keeps the
    # feedback ordered before the caller's next request.
    async def on_success(self) -> None:
        """A request completed without a 429."""
        ...

    async def on_rate_limited(self) -> None:
        """Rime answered 429: in adaptive mode, shrink the cap."""
        ...


class Aimd:
    """Additive-increase / multiplicative-decrease of a concurrency cap (pure, no I/O)."""

    def __init__(self, ceiling: int, probe_after: int) -> None:
        self.ceiling = ceiling
        self.cap = ceiling
        self.probe_after = probe_after
        self._streak = 0

    def success(self) -> int:
        """Record a success; returns the cap."""
        self._streak += 1
        if self._streak >= self.probe_after and self.cap < self.ceiling:
            self.cap += 1
            self._streak = 0
        return self.cap

    def rate_limited(self) -> int:
        """Record a 429; returns the cap."""
        self._streak = 0
        self.cap = max(1, self.cap // 2)
        return self.cap


def bucket_capacity(per_minute: int) -> float:
    """The burst a requests-per-minute budget allows: 10 seconds' worth, at least one request."""
    return max(1.0, per_minute / 6.0)


class TokenBucket:
    """Requests-per-minute budget: `rate` tokens a minute, bursts up to `rate / 6` (10 s worth)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = bucket_capacity(per_minute)
        self.tokens = self.capacity
        self._clock = clock
        self._stamp = self._clock()

    def take(self) -> float:
        """Take a token if one is there (returns 0), else the seconds until one will be."""
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class LocalLimiter:
    """In-process limits for the embedded executor (one event loop)."""

    def __init__(self, config: LimitConfig) -> None:
        if config.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.config = config
        self._aimd = Aimd(config.concurrency, config.probe_after)
        self._in_flight = 0
        self.peak_in_flight = 0
        self._changed = asyncio.Condition()
        self._bucket = (
            TokenBucket(config.requests_per_minute) if config.requests_per_minute else None
        )

    @property
    def cap(self) -> int:
        """The concurrency cap in force now (lower than configured after 429s in adaptive mode)."""
        return self._aimd.cap if self.config.adaptive else self.config.concurrency

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_flight < self.cap)
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            while self._bucket is not None and (delay := self._bucket.take()) > 0:
                await asyncio.sleep(delay)
            yield
        finally:
            async with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Wait for a free slot (and a token when a budget is set); hold it for one request."""
        return self._slot()

    async def on_success(self) -> None:
        """A request completed without a 429."""
        if self.config.adaptive:
            self._aimd.success()

    async def on_rate_limited(self) -> None:
        """Rime answered 429: in adaptive mode, shrink the cap."""
        if self.config.adaptive:
            self._aimd.rate_limited()
