"""The requests-per-minute budget: a token bucket as pure transitions, clock passed in.

`BucketRule` is the rule, written once: the local limiter applies it to a `BucketState` in
memory (`TokenBucket`), the shared one to a `BucketState` kept in Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Self

# A taker that slept exactly the wait it was given can find its token short by a rounding
# error; counting that as a token saves it another take (for the shared limiter, a round trip).
ROUNDING = 1e-9


def bucket_capacity(per_minute: int) -> float:
    """The burst a requests-per-minute budget allows: 10 seconds' worth, at least one request."""
    return max(1.0, per_minute / 6.0)


@dataclass(frozen=True)
class BucketState:
    """The tokens in the bucket, and when they were counted."""

    tokens: float
    stamp: float

    def to_fields(self) -> dict[str, str]:
        """The state as text fields (repr round-trips a float exactly)."""
        return {"tokens": repr(self.tokens), "stamp": repr(self.stamp)}

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Self:
        """The state that `to_fields` wrote."""
        return cls(tokens=float(fields["tokens"]), stamp=float(fields["stamp"]))


@dataclass(frozen=True)
class BucketRule:
    """`per_minute` tokens a minute, bursts up to a sixth of that (10 s worth); pure methods."""

    per_minute: int

    @property
    def rate(self) -> float:
        """Tokens a second."""
        return self.per_minute / 60.0

    @property
    def capacity(self) -> float:
        """The most tokens the bucket holds."""
        return bucket_capacity(self.per_minute)

    @property
    def refill_seconds(self) -> float:
        """How long an empty bucket takes to fill: a bucket left alone that long is a new one."""
        return self.capacity / self.rate

    def start(self, now: float) -> BucketState:
        """A full bucket."""
        return BucketState(self.capacity, now)

    def take(self, state: BucketState, now: float) -> tuple[BucketState, float]:
        """Take a token at `now`: the new state and 0, or the state unchanged and the seconds
        until a token will be there."""
        # A clock that steps back (Redis's, on a resync) neither adds nor removes tokens.
        elapsed = max(0.0, now - state.stamp)
        tokens = min(self.capacity, state.tokens + elapsed * self.rate)
        if tokens >= 1.0 - ROUNDING:
            return BucketState(max(0.0, tokens - 1.0), max(now, state.stamp)), 0.0
        # Refilling is additive, so the state as it was is as good as one counted at `now`.
        return state, (1.0 - tokens) / self.rate


class TokenBucket:
    """A requests-per-minute budget held in memory: the rule, its state and a clock."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rule = BucketRule(per_minute)
        self._clock = clock
        self.state = self.rule.start(clock())

    def take(self) -> float:
        """Take a token if one is there (returns 0), else the seconds until one will be."""
        self.state, wait = self.rule.take(self.state, self._clock())
        return wait
