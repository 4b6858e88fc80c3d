"""A rule's state, kept in one Redis hash and changed by the rule's own Python transition.

A change is an optimistic transaction. One script reads the state and the time (Redis `TIME`,
so the hosts' clocks do not matter; tests pass a clock instead). The pure transition runs here.
A compare-and-set script then writes the whole new state, but only if nobody wrote it in
between (its `version` field has not moved); if somebody did, it answers with the state as it
now is, and the time, and the transition is applied again to that. So a change costs two round
trips, and one more per race lost to another process; one that leaves the state as it was
writes nothing.

This is the transaction WATCH/MULTI/EXEC would make, in two round trips instead of four (WATCH,
the read, TIME, MULTI...EXEC), and it pins no connection between them. The scripts hold no
rule: they read, compare a number, write given fields and push a given wake-up. Changes made
through one `RedisState` run one at a time, so only other processes can make one race. A
change retried because Redis went away after writing but before replying applies its
transition twice (a success counted twice, a token taken twice), as a retried script would.

An absent hash is the rule's start state: the hash expires `ttl_seconds` after its last write
(or, with `touch`, its last read for a change), which is how the state is forgotten.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

import redis.asyncio as aioredis
from redis.typing import EncodableT

# KEYS: state. ARGV: ttl_ms to keep it alive for, or 0. Returns {seconds, microseconds,
# {field, value, ...}}: the time now and the state.
_READ = """
if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local t = redis.call('TIME')
return {t[1], t[2], redis.call('HGETALL', KEYS[1])}
"""

# KEYS: state, wake. ARGV: version read, ttl_ms, wake_keep (0: no wake-up), field, value, ...
# Returns nil when it wrote the state; when someone else had written it since it was read,
# what _READ returns.
_SET_IF_UNCHANGED = """
local version = tonumber(redis.call('HGET', KEYS[1], 'version')) or 0
if version ~= tonumber(ARGV[1]) then
  local t = redis.call('TIME')
  return {t[1], t[2], redis.call('HGETALL', KEYS[1])}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', version + 1, unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local keep = tonumber(ARGV[3])
if keep > 0 then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, keep - 1)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return false
"""


class Stored(Protocol):
    """A state that travels as text fields."""

    def to_fields(self) -> dict[str, str]:
        """The state as text fields."""
        ...

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Self:
        """The state that `to_fields` wrote."""
        ...


S = TypeVar("S", bound=Stored)
R = TypeVar("R")


@dataclass(frozen=True)
class Change(Generic[S, R]):
    """One applied transition: the state before and after, and what the transition returned."""

    before: S
    after: S
    result: R


def _never(before: object, after: object) -> bool:
    return False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisState(Generic[S]):
    """The state of one rule in the hash at `key`."""

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        kind: type[S],
        start: Callable[[float], S],
        *,
        ttl_seconds: float,
        touch: bool = False,
        wake_key: str,
        wake_keep: int = 1,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._redis = client
        self.key = key
        self._kind = kind
        self._start = start
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self._touch = touch
        self._wake_key = wake_key
        self._wake_keep = wake_keep
        self._clock = clock
        self._lock = asyncio.Lock()
        self._read = client.register_script(_READ)
        self._set_if_unchanged = client.register_script(_SET_IF_UNCHANGED)

    async def read(self) -> S:
        """The state stored now (the start state when none is)."""
        state, _, _ = self._parse(await self._read(keys=[self.key], args=[0]))
        return state

    async def change(
        self,
        transition: Callable[[S, float], tuple[S, R]],
        wake: Callable[[S, S], bool] = _never,
    ) -> Change[S, R]:
        """Apply `transition(state, now)` atomically; push a wake-up when `wake(before, after)`."""
        async with self._lock:
            touch = self._ttl_ms if self._touch else 0
            snapshot = await self._read(keys=[self.key], args=[touch])
            while True:
                before, version, now = self._parse(snapshot)
                after, result = transition(before, now)
                if after == before:
                    return Change(before, after, result)
                keep = self._wake_keep if wake(before, after) else 0
                args: list[EncodableT] = [version, self._ttl_ms, keep]
                for field, value in after.to_fields().items():
                    args += [field, value]
                snapshot = await self._set_if_unchanged(keys=[self.key, self._wake_key], args=args)
                if snapshot is None:
                    return Change(before, after, result)

    def _parse(self, snapshot: list[Any]) -> tuple[S, int, float]:
        """The state in a script's answer, its version, and the time now."""
        seconds, micros, flat = snapshot
        now = int(seconds) + int(micros) / 1_000_000 if self._clock is None else self._clock()
        fields = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
        version = int(fields.pop("version", 0))
        state = self._kind.from_fields(fields) if fields else self._start(now)
        return state, version, now
