"""A rule's state, kept in one Redis hash and changed by the rule's own Python transition.

A change is an optimistic transaction of two round trips. One pipeline reads the state and the
time (Redis `TIME`, so the hosts' clocks do not matter; tests pass a clock instead). The pure
transition runs here. A compare-and-set script then writes the whole new state, but only if
nobody wrote it in between (its `version` field has not moved); otherwise the change starts
over from a fresh read. A transition that leaves the state as it was writes nothing.

This is the transaction WATCH/MULTI/EXEC would make, in two round trips instead of four (WATCH,
the read, TIME, MULTI...EXEC), and it pins no connection between them. The script holds no
rule: it compares a number, writes given fields and pushes a given wake-up. Changes made
through one `RedisState` run one at a time, so only other processes can make a change start
over. A change retried because Redis went away after writing but before replying applies its
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

# KEYS: state, wake. ARGV: version read, ttl_ms, wake_keep (0: no wake-up), field, value, ...
# Returns 1 when it wrote the state, 0 when someone else had written it since it was read.
_SET_IF_UNCHANGED = """
local version = tonumber(redis.call('HGET', KEYS[1], 'version')) or 0
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', version + 1, unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local keep = tonumber(ARGV[3])
if keep > 0 then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, keep - 1)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
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
        self._set_if_unchanged = client.register_script(_SET_IF_UNCHANGED)

    async def read(self) -> S:
        """The state stored now (the start state when none is)."""
        state, _, _ = await self._read(touch=False)
        return state

    async def change(
        self,
        transition: Callable[[S, float], tuple[S, R]],
        wake: Callable[[S, S], bool] = _never,
    ) -> Change[S, R]:
        """Apply `transition(state, now)` atomically; push a wake-up when `wake(before, after)`."""
        async with self._lock:
            while True:
                before, version, now = await self._read(self._touch)
                after, result = transition(before, now)
                if after == before:
                    return Change(before, after, result)
                keep = self._wake_keep if wake(before, after) else 0
                args: list[EncodableT] = [version, self._ttl_ms, keep]
                for field, value in after.to_fields().items():
                    args += [field, value]
                written = await self._set_if_unchanged(keys=[self.key, self._wake_key], args=args)
                if int(written):
                    return Change(before, after, result)

    async def _read(self, touch: bool) -> tuple[S, int, float]:
        """The state, its version, and the time now."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.key)
            if self._clock is None:
                pipe.time()
            if touch:
                pipe.pexpire(self.key, self._ttl_ms)
            replies: list[Any] = await pipe.execute()
        if self._clock is None:
            seconds, micros = replies[1]
            now = int(seconds) + int(micros) / 1_000_000
        else:
            now = self._clock()
        fields = {_text(k): _text(v) for k, v in replies[0].items()}
        version = int(fields.pop("version", 0))
        state = self._kind.from_fields(fields) if fields else self._start(now)
        return state, version, now
