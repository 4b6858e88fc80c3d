"""Admission per API key: bursts of 429, requests per minute, concurrent generations.

A request holds one generation slot from admission until its last byte (or its hang-up); a
WebSocket connection holds one for its whole life (Rime's limit is on concurrent generations and
a connection can generate at any time). Checks run in this order: burst, rate, concurrency.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass

from rime_local.config import EngineConfig


@dataclass(frozen=True)
class Rejection:
    """Why a request was refused: status, plain-text body, Retry-After seconds."""

    status: int
    message: str
    retry_after: int


class Gate:
    """Counts per key; `admit` either takes a slot or returns a Rejection."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = defaultdict(int)
        self._recent: dict[str, deque[float]] = defaultdict(deque)
        self.burst_left = 0
        self.burst_until = 0.0

    def arm_burst_count(self, config: EngineConfig) -> None:
        """The next `burst_429` requests get 429."""
        self.burst_left = config.burst_429

    def arm_burst_window(self, config: EngineConfig) -> None:
        """Requests in the next `burst_429_seconds` get 429."""
        self.burst_until = time.monotonic() + config.burst_429_seconds

    def total_in_flight(self) -> int:
        """Slots held over all keys."""
        return sum(self.in_flight.values())

    def admit(self, key: str, config: EngineConfig) -> Rejection | None:
        """Take a slot for `key`, or say why not."""
        retry = config.retry_after_seconds
        now = time.monotonic()
        if self.burst_left > 0:
            self.burst_left -= 1
            return Rejection(429, "Too many requests (burst)", retry)
        if now < self.burst_until:
            return Rejection(429, "Too many requests (burst)", retry)
        if config.requests_per_minute:
            recent = self._recent[key]
            while recent and recent[0] <= now - 60:
                recent.popleft()
            if len(recent) >= config.requests_per_minute:
                wait = max(1, int(recent[0] + 60 - now + 0.999))
                return Rejection(429, "Too many requests per minute", wait)
            recent.append(now)
        if config.concurrency_per_key and self.in_flight[key] >= config.concurrency_per_key:
            return Rejection(
                429,
                f"Too many concurrent generations (limit {config.concurrency_per_key})",
                retry,
            )
        self.in_flight[key] += 1
        return None

    def release(self, key: str) -> None:
        """Give back a slot taken by `admit`."""
        self.in_flight[key] -= 1
        if self.in_flight[key] <= 0:
            del self.in_flight[key]
