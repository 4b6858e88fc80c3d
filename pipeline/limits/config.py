"""What a limiter is, and the limits a user configures (the one home of their defaults)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class LimitConfig:
    """The limits a user configures."""

    concurrency: int = 5  # Rime's pay-as-you-go plan: 5 concurrent generations
    requests_per_minute: int | None = None
    # On by default: a cap set above the account's real limit then costs speed, not failed
    # scripts (see pipeline.limits.aimd). Off holds the cap exactly, for a known limit.
    adaptive: bool = True
    probe_after: int = 10  # successes in a row before an adaptive cap grows by one
    # After a halving (or a failed probe), 429s for this long are the same overload: they come
    # from requests that were already in flight.
    cooldown_seconds: float = 2.0


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
