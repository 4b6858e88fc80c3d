"""Everything one running engine shares between requests: knobs, counters, admission, faults."""

from __future__ import annotations

import hmac
from typing import Any

from rime_local.admission import Gate, Rejection
from rime_local.config import EngineConfig
from rime_local.faults import FaultDice, FaultPlan
from rime_local.metrics import EngineMetrics
from rime_local.voice import Espeak, get_espeak

# The limit bucket of clients that send no key to an engine without keys.
ANONYMOUS = "anonymous"


class EngineState:
    """The mutable heart of one engine; only touched from its event loop."""

    def __init__(self, config: EngineConfig, espeak: Espeak | None = None) -> None:
        self.config = config
        self.metrics = EngineMetrics()
        self.gate = Gate()
        self.gate.arm_burst_count(config)
        self.gate.arm_burst_window(config)
        self.dice = FaultDice(config.fault_seed)
        self.espeak = espeak or get_espeak()

    def configure(self, **changes: Any) -> EngineConfig:
        """Change knobs at runtime; a new seed restarts the fault sequence."""
        new = self.config.with_changes(**changes)
        self.config = new
        if "fault_seed" in changes or any(k.startswith("fault_") for k in changes):
            self.dice = FaultDice(new.fault_seed)
        if "burst_429" in changes:
            self.gate.arm_burst_count(new)
        if "burst_429_seconds" in changes:
            self.gate.arm_burst_window(new)
        return new

    def authorize(self, header: str | None) -> str | None:
        """The caller's limit key, or None when keys are configured and this one is not valid."""
        token = _bearer(header)
        if not self.config.api_keys:
            return token or ANONYMOUS
        for key in self.config.api_keys:
            if token and hmac.compare_digest(token.encode(), key.encode()):
                return key
        return None

    def refusal(self, header: str | None) -> str:
        """The 401 message for a refused key; it echoes the key when `echo_refused_key_at` says."""
        message = "Unauthorized: missing or invalid API key"
        at = self.config.echo_refused_key_at
        if at < 0:
            return message
        filler = (message + ". ") * (at // len(message) + 1)
        return f"{filler[:at]}{_bearer(header)} is not a key of this account"

    def admit(self, key: str) -> Rejection | None:
        """Take a generation slot for `key` (counted in metrics) or say why not."""
        rejection = self.gate.admit(key, self.config)
        if rejection is not None:
            self.metrics.rejected_429 += 1
            return rejection
        self.metrics.started()
        return None

    def release(self, key: str) -> None:
        """Give back the slot taken by a successful `admit`."""
        self.gate.release(key)
        self.metrics.ended()

    def draw_fault(self) -> FaultPlan:
        """This request's fault, counted in metrics when there is one."""
        plan = self.dice.draw(self.config)
        if plan.kind is not None:
            self.metrics.faults[plan.kind] += 1
        return plan


def _bearer(header: str | None) -> str:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return ""
