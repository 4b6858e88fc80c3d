"""Limits on requests to Rime: a concurrency cap and an optional requests-per-minute budget.

`Limiter` is the one interface every executor uses. `LocalLimiter` holds the limits in this
process (the embedded executor); the Celery workers back the same interface with Redis so that
every worker on every host shares one cap (`pipeline.redis_limits.RedisLimiter`).

Adaptive mode is for accounts shared with live traffic, or whose limit is unknown: the cap
starts at half the configured one and grows by one after `probe_after` successes in a row; a 429
just after a raise takes it back to the last cap that worked (and makes the next probe wait
longer), any other 429 halves it (additive increase, multiplicative decrease). It never goes
above the configured cap nor below one. `Aimd` holds the rule; both limiters follow it.
"""

from __future__ import annotations

import asyncio
import math
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


# A failed probe multiplies the successes needed before the next one by PROBE_BACKOFF, up to
# MAX_PROBE_FACTOR times `probe_after`: a cap at the account's limit then costs one 429 per that
# many successes. Four rather than two reaches that rate within two failed probes instead of
# four, which for a batch of a few hundred requests halves the 429s spent finding the limit.
PROBE_BACKOFF = 4
MAX_PROBE_FACTOR = 16
# After a halving, 429s of requests already in flight say nothing new for this long.
COOLDOWN_SECONDS = 2.0


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
    """The adaptive concurrency cap as pure transitions (the clock is injected).

    It starts at half the ceiling, so a run does not open by flooding an account whose limit
    is unknown. `probe_after` successes in a row raise the cap by one: a probe. A 429 while a
    probe is pending (the raise has not yet been followed by `probe_after` successes) means the
    probe failed: the cap goes back to the last one that worked, and the successes needed before
    the next probe grow `PROBE_BACKOFF`-fold (up to `MAX_PROBE_FACTOR` times `probe_after`),
    so a cap sitting at the account's limit probes ever more rarely. Any other 429 is real
    contention (say live traffic took the account's slots): the cap halves, at most once per
    cool-down, since the 429s of requests already in flight say nothing new. A raise ends the
    cool-down, so a 429 at the raised cap always counts. The cap stays between one and the ceiling.
    """

    def __init__(
        self,
        ceiling: int,
        probe_after: int,
        cooldown_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = ceiling
        self.probe_after = probe_after
        self.cooldown_seconds = cooldown_seconds
        self.cap = start_cap(ceiling)
        self.need = probe_after  # successes in a row before the next probe
        self.fallback: int | None = None  # the last cap that worked, while a probe is pending
        self._streak = 0
        self._clock = clock
        self._cooldown_until = -math.inf

    def success(self) -> int:
        """Record a success; returns the cap."""
        if self.cap >= self.ceiling and self.fallback is None:
            return self.cap
        self._streak += 1
        if self.fallback is not None and self._streak >= self.probe_after:
            # The raised cap held: probe onwards at the usual pace.
            self.fallback = None
            self.need = self.probe_after
        if self._streak >= self.need and self.cap < self.ceiling:
            self.fallback = self.cap
            self.cap += 1
            self._streak = 0
            self._cooldown_until = -math.inf
        return self.cap

    def rate_limited(self) -> int:
        """Record a 429; returns the cap."""
        self._streak = 0
        now = self._clock()
        if self.fallback is not None:
            self.cap = min(self.cap, self.fallback)
            self.fallback = None
            self.need = min(PROBE_BACKOFF * self.need, MAX_PROBE_FACTOR * self.probe_after)
            self._cooldown_until = now + self.cooldown_seconds
            return self.cap
        if now < self._cooldown_until:
            return self.cap
        self._cooldown_until = now + self.cooldown_seconds
        self.cap = max(1, self.cap // 2)
        self.need = self.probe_after
        return self.cap


def start_cap(ceiling: int) -> int:
    """Where an adaptive cap starts: half the ceiling, rounded up."""
    return max(1, (ceiling + 1) // 2)


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
        self._aimd = Aimd(config.concurrency, config.probe_after, COOLDOWN_SECONDS)
        self._in_flight = 0
        self.peak_in_flight = 0
        self._changed = asyncio.Condition()
        self._bucket = (
            TokenBucket(config.requests_per_minute) if config.requests_per_minute else None
        )

    @property
    def cap(self) -> int:
        """The concurrency cap in force now (in adaptive mode, the adaptive cap)."""
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
            before = self._aimd.cap
            if self._aimd.success() > before:
                async with self._changed:  # a raised cap admits a waiter at once
                    self._changed.notify_all()

    async def on_rate_limited(self) -> None:
        """Rime answered 429: in adaptive mode, lower the cap."""
        if self.config.adaptive:
            self._aimd.rate_limited()
