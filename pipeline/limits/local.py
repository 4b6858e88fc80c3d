"""`LocalLimiter`: the limits held in this process, for the embedded executor (one event loop)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from pipeline.limits.aimd import Aimd
from pipeline.limits.bucket import TokenBucket
from pipeline.limits.config import LimitConfig


class LocalLimiter:
    """In-process limits for the embedded executor (one event loop)."""

    def __init__(
        self,
        config: LimitConfig,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if config.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.config = config
        self._aimd = Aimd(config.concurrency, config.probe_after, config.cooldown_seconds, clock)
        self._in_flight = 0
        self.peak_in_flight = 0
        self._changed = asyncio.Condition()
        self._sleep = sleep
        self._bucket = (
            TokenBucket(config.requests_per_minute, clock) if config.requests_per_minute else None
        )

    @property
    def cap(self) -> int:
        """The concurrency cap in force now (in adaptive mode, the adaptive cap)."""
        return self._aimd.cap if self.config.adaptive else self.config.concurrency

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        async with self._changed:
            try:
                await self._changed.wait_for(lambda: self._in_flight < self.cap)
            except asyncio.CancelledError:
                # A release wakes one waiter only: if it was this one, pass the wake-up on.
                self._changed.notify(1)
                raise
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            while self._bucket is not None and (delay := self._bucket.take()) > 0:
                await self._sleep(delay)
            yield
        finally:
            async with self._changed:
                self._in_flight -= 1
                # One slot freed, one waiter woken: waking all would wake the rest for nothing.
                self._changed.notify(1)

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
