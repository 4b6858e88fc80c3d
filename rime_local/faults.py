"""Injected faults, drawn from a seeded generator so a test run can be replayed."""

from __future__ import annotations

import random
from dataclasses import dataclass

from rime_local.config import EngineConfig


@dataclass(frozen=True)
class FaultPlan:
    """What goes wrong with one request (all None/0: nothing)."""

    error_status: int | None = None
    # Stop the body for good after this many bytes.
    cut_after: int | None = None
    # Pause the body for `stall_seconds` after this many bytes.
    stall_after: int | None = None
    stall_seconds: float = 0.0
    # Append silence so the audio is far longer than its text could be spoken in.
    implausible: bool = False

    @property
    def kind(self) -> str | None:
        """The name this fault is counted under in /metrics."""
        if self.error_status is not None:
            return f"http_{self.error_status}"
        if self.cut_after is not None:
            return "cut"
        if self.stall_after is not None:
            return "stall"
        if self.implausible:
            return "implausible"
        return None

    def padding_seconds(self, characters: int) -> float:
        """Silence to append to the speech of `characters` characters (0 without the fault)."""
        # Past any bound a client could set: a second a character is 15 times normal speech.
        return 10.0 + characters if self.implausible else 0.0


NO_FAULT = FaultPlan()


class FaultDice:
    """One draw per request from a generator seeded with the configured seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rng = random.Random(seed)

    def draw(self, config: EngineConfig) -> FaultPlan:
        """The fault (or none) for the next request."""
        if not (
            config.fault_error_rate
            or config.fault_cut_rate
            or config.fault_stall_rate
            or config.fault_implausible_rate
        ):
            return NO_FAULT
        rng = self._rng
        roll = rng.random()
        if roll < config.fault_error_rate:
            return FaultPlan(error_status=rng.choice((500, 503)))
        roll -= config.fault_error_rate
        # Cut or stall a few kilobytes in: late enough that the client has started reading.
        after = rng.randrange(1024, 8192)
        if roll < config.fault_cut_rate:
            return FaultPlan(cut_after=after)
        roll -= config.fault_cut_rate
        if roll < config.fault_stall_rate:
            return FaultPlan(stall_after=after, stall_seconds=config.stall_seconds)
        roll -= config.fault_stall_rate
        if roll < config.fault_implausible_rate:
            return FaultPlan(implausible=True)
        return NO_FAULT
