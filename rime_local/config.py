"""The engine's knobs: keys, limits, latency and faults. All can change while it runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_FAULT_RATES = ("fault_error_rate", "fault_cut_rate", "fault_stall_rate", "fault_implausible_rate")


@dataclass(frozen=True)
class EngineConfig:
    """How the local engine behaves; the defaults are an open, fast, fault-free server."""

    host: str = "127.0.0.1"
    # 0 picks a free port.
    port: int = 0
    # Accepted bearer tokens; empty means no authentication (the engine binds loopback only).
    api_keys: frozenset[str] = field(default_factory=frozenset)
    # Concurrent generations per key before 429; Rime's pay-as-you-go plan allows 5. 0 = no limit.
    concurrency_per_key: int = 0
    # Requests per rolling minute per key before 429. 0 = no limit.
    requests_per_minute: int = 0
    # Seconds a 429 tells the client to wait (Retry-After).
    retry_after_seconds: int = 1
    # Extra delay before the first audio byte of every synthesis.
    ttfb_ms: int = 0
    # Stream no faster than this many times real time; 0 streams as fast as espeak goes.
    pacing: float = 0.0
    # Faults, drawn per request from a generator seeded with `fault_seed`.
    fault_seed: int = 0
    fault_error_rate: float = 0.0  # a 500 or 503 instead of audio
    fault_cut_rate: float = 0.0  # the body stops mid-stream, the connection closes
    fault_stall_rate: float = 0.0  # the body pauses mid-stream for `stall_seconds`
    stall_seconds: float = 5.0
    # Whole, well-formed audio far longer than the text could be spoken in (silence appended).
    fault_implausible_rate: float = 0.0
    # The next N requests get 429 (a burst), counted down as they arrive.
    burst_429: int = 0
    # Every request within this many seconds of the setting gets 429.
    burst_429_seconds: float = 0.0
    # A refused key is echoed in the 401 message after this many characters of filler, as some
    # gateways do; -1 never echoes it. Lets tests check that clients keep keys out of messages.
    echo_refused_key_at: int = -1

    def __post_init__(self) -> None:
        # Keys are optional and /admin/config has none, so the engine never leaves this machine.
        if self.host not in LOOPBACK_HOSTS:
            raise ValueError(f"host must be a loopback address ({', '.join(LOOPBACK_HOSTS)})")
        for name in _FAULT_RATES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        for name in (
            "port",
            "concurrency_per_key",
            "requests_per_minute",
            "retry_after_seconds",
            "ttfb_ms",
            "burst_429",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("pacing", "stall_seconds", "burst_429_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.echo_refused_key_at < -1:
            raise ValueError("echo_refused_key_at must be -1 (never) or a position")

    def with_changes(self, **changes: Any) -> EngineConfig:
        """A copy with knobs changed; unknown names and bad values raise ValueError."""
        known = {f.name: f for f in dataclasses.fields(self)}
        coerced: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown engine knob {name!r}")
            coerced[name] = _coerce(name, getattr(self, name), value)
        return dataclasses.replace(self, **coerced)

    def public(self) -> dict[str, Any]:
        """The knobs as JSON, with the keys themselves left out."""
        data = dataclasses.asdict(self)
        data["api_keys"] = len(self.api_keys)
        return data


def _coerce(name: str, current: object, value: object) -> object:
    if isinstance(current, frozenset):
        if isinstance(value, str):
            return frozenset(k.strip() for k in value.split(",") if k.strip())
        if isinstance(value, list | tuple | set | frozenset):
            return frozenset(str(k) for k in value)
        raise ValueError(f"{name} must be a list of keys")
    if isinstance(current, bool) or value is None:
        raise ValueError(f"{name} cannot be set to {value!r}")
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"{name} must be a whole number")
        return int(value)
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"{name} must be a number")
        return float(value)
    return str(value)


class EngineSettings(BaseSettings):
    """`RIME_ENGINE_*` environment variables (api_keys comma-separated)."""

    model_config = SettingsConfigDict(env_prefix="RIME_ENGINE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8765
    api_keys: str = ""
    concurrency_per_key: int = 0
    requests_per_minute: int = 0
    retry_after_seconds: int = 1
    ttfb_ms: int = 0
    pacing: float = 0.0
    fault_seed: int = 0
    fault_error_rate: float = 0.0
    fault_cut_rate: float = 0.0
    fault_stall_rate: float = 0.0
    stall_seconds: float = 5.0
    fault_implausible_rate: float = 0.0
    burst_429: int = 0
    burst_429_seconds: float = 0.0
    echo_refused_key_at: int = -1

    def to_config(self, **overrides: Any) -> EngineConfig:
        """An EngineConfig from the environment, with explicit overrides (flags) on top."""
        values = self.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return EngineConfig().with_changes(**values)
