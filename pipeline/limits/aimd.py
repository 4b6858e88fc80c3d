"""The adaptive concurrency cap (AIMD): pure transitions over a small state, clock passed in.

The cap starts at half the ceiling, so a run does not open by flooding an account whose limit
is unknown. `probe_after` successes in a row raise the cap by one: a probe. A 429 while a probe
is pending (the raise has not yet been followed by `probe_after` successes) means the probe
failed: the cap goes back to the last one that worked, and the successes needed before the next
probe grow `PROBE_BACKOFF`-fold (up to `MAX_PROBE_FACTOR` times `probe_after`), so a cap sitting
at the account's limit probes ever more rarely. Any other 429 is real contention (say live
traffic took the account's slots): the cap halves, at most once per cool-down, since the 429s of
requests already in flight say nothing new. A raise ends the cool-down, so a 429 at the raised
cap always counts. The cap stays between one and the ceiling.

`AimdRule` is the rule, written once: both limiters apply it, the local one to an `AimdState`
in memory (`Aimd`), the shared one to an `AimdState` kept in Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Self

# A failed probe multiplies the successes needed before the next one by PROBE_BACKOFF, up to
# MAX_PROBE_FACTOR times `probe_after`: a cap at the account's limit then costs one 429 per that
# many successes. Four rather than two reaches that rate within two failed probes instead of
# four, which for a batch of a few hundred requests halves the 429s spent finding the limit.
PROBE_BACKOFF = 4
MAX_PROBE_FACTOR = 16


@dataclass(frozen=True)
class AimdState:
    """All the adaptive rule remembers between two outcomes."""

    cap: int
    need: int  # successes in a row before the next probe
    fallback: int | None = None  # the last cap that worked, while a probe is pending
    streak: int = 0  # successes in a row towards the next probe (or towards confirming one)
    cooldown_until: float | None = None  # until then a 429 does not halve

    def to_fields(self) -> dict[str, str]:
        """The state as text fields; None fields are left out."""
        fields = {"cap": str(self.cap), "need": str(self.need), "streak": str(self.streak)}
        if self.fallback is not None:
            fields["fallback"] = str(self.fallback)
        if self.cooldown_until is not None:
            fields["cooldown_until"] = repr(self.cooldown_until)  # repr round-trips exactly
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Self:
        """The state that `to_fields` wrote."""
        fallback, cooldown = fields.get("fallback"), fields.get("cooldown_until")
        return cls(
            cap=int(fields["cap"]),
            need=int(fields["need"]),
            fallback=None if fallback is None else int(fallback),
            streak=int(fields["streak"]),
            cooldown_until=None if cooldown is None else float(cooldown),
        )


def start_cap(ceiling: int) -> int:
    """Where an adaptive cap starts: half the ceiling, rounded up."""
    return max(1, (ceiling + 1) // 2)


@dataclass(frozen=True)
class AimdRule:
    """The adaptive rule for one ceiling; every method is pure."""

    ceiling: int
    probe_after: int
    cooldown_seconds: float = 0.0

    def start(self) -> AimdState:
        """The state of a cap that has seen no outcome yet."""
        return AimdState(cap=start_cap(self.ceiling), need=self.probe_after)

    def bounded(self, state: AimdState) -> AimdState:
        """`state` with its cap at most this ceiling (a worker set up with a higher one may have
        stored it)."""
        return state if state.cap <= self.ceiling else replace(state, cap=self.ceiling)

    def success(self, state: AimdState) -> AimdState:
        """The state after a request that succeeded."""
        if state.cap >= self.ceiling and state.fallback is None:
            return state
        streak, need, fallback = state.streak + 1, state.need, state.fallback
        if fallback is not None and streak >= self.probe_after:
            # The raised cap held: probe onwards at the usual pace.
            fallback, need = None, self.probe_after
        if streak >= need and state.cap < self.ceiling:
            return AimdState(cap=state.cap + 1, need=need, fallback=state.cap)
        return replace(state, need=need, fallback=fallback, streak=streak)

    def rate_limited(self, state: AimdState, now: float) -> AimdState:
        """The state after a 429 at time `now` (seconds, on the clock of the cool-down)."""
        until = now + self.cooldown_seconds
        if state.fallback is not None:
            need = min(PROBE_BACKOFF * state.need, MAX_PROBE_FACTOR * self.probe_after)
            cap = min(state.cap, state.fallback)
            return AimdState(cap=cap, need=need, cooldown_until=until)
        if state.cooldown_until is not None and now < state.cooldown_until:
            return replace(state, streak=0)
        return AimdState(cap=max(1, state.cap // 2), need=self.probe_after, cooldown_until=until)


class Aimd:
    """An adaptive cap held in memory: the rule, its state, and the clock of its cool-down."""

    def __init__(
        self,
        ceiling: int,
        probe_after: int,
        cooldown_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rule = AimdRule(ceiling, probe_after, cooldown_seconds)
        self.state = self.rule.start()
        self._clock = clock

    @property
    def cap(self) -> int:
        """The cap in force."""
        return self.state.cap

    @property
    def need(self) -> int:
        """Successes in a row before the next probe."""
        return self.state.need

    @property
    def fallback(self) -> int | None:
        """The last cap that worked, while a probe is pending."""
        return self.state.fallback

    def success(self) -> int:
        """Record a success; returns the cap."""
        self.state = self.rule.success(self.state)
        return self.state.cap

    def rate_limited(self) -> int:
        """Record a 429; returns the cap."""
        self.state = self.rule.rate_limited(self.state, self._clock())
        return self.state.cap
