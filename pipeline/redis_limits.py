"""One set of limits shared by every worker on every host, held in Redis.

`RedisLimiter` implements `pipeline.limits.Limiter` for the Celery workers: the concurrency cap,
the requests-per-minute budget and the adaptive cap of one Rime account live in Redis, so that
the sum over all workers obeys them. The adaptive cap follows the rule of `pipeline.limits.Aimd`,
with the cool-down measured by Redis. A 429 (`RateLimited`) raised inside a slot is reported
before the slot is released. Every decision is one Lua script, so it is atomic, and every
script reads the clock with Redis `TIME`, so the hosts' clocks do not matter.

Keys, all under one hash tag so that a cluster keeps them in one slot (`{ns}` below):

    {ns}:leases    sorted set: one random token per held slot, scored by its expiry (ms)
    {ns}:wake      list: one entry pushed per freed slot, popped by a waiting worker
    {ns}:cap       adaptive mode: the cap in force (absent means half the configured ceiling)
    {ns}:streak    adaptive mode: successes since the cap last changed
    {ns}:cooldown  adaptive mode: present while a halving (or a failed probe) is fresh; later
                   429s do not halve; a raise deletes it
    {ns}:probe     adaptive mode, hash: `need`, the successes due before the next raise, and
                   `fallback`, the last cap that worked, present while a raise is unconfirmed
    {ns}:bucket    hash: tokens and the time they were counted, for the per-minute budget
    {ns}:peak      the most slots ever held at once (for tests and benchmarks)

A slot is a lease: a worker that dies without releasing it loses it after `lease_seconds`,
while a live holder renews it every third of that. Waiting for a slot blocks on `{ns}:wake`
with BLPOP for at most `poll_seconds`, so a freed slot is handed over at once and an expired
lease is still noticed within a poll. Inside one limiter only one task waits in Redis at a
time; the others queue behind it in order, so a busy process needs one blocking connection.

Redis going away is waited out: connection errors while acquiring are retried with backoff
forever, while renewals, releases and outcome reports log and carry on. After a restart the
lease set is empty and counting starts over; a live holder's next renewal puts its lease back.

No Redis command is ever cancelled: redis-py can hang on, or mix up, a connection whose task
was cancelled while it waited for a reply. Each command runs in a task of its own that a
cancelled caller leaves to finish (a wait for a slot stops after its current poll and gives
back a slot it got meanwhile). So close the limiter (`aclose`, or `async with`) before its event
loop ends. Use one limiter per event loop; needs Redis 6 or later (fractional BLPOP timeouts).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript
from redis.typing import EncodableT
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base

from pipeline.limits import (
    COOLDOWN_SECONDS,
    MAX_PROBE_FACTOR,
    PROBE_BACKOFF,
    LimitConfig,
    bucket_capacity,
    start_cap,
)
from pipeline.rime.errors import RateLimited

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors that mean "Redis is not reachable right now" (down, restarting, loading its data).
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)
# Adaptive state and the peak are forgotten after an hour without a change, so a new run on a
# quiet account starts afresh (at half the configured cap) rather than at an old halving.
STATE_TTL_SECONDS = 3600.0
# Outcome reports, releases and readings give up this soon when Redis is away: a lost release
# only means the lease runs out by itself.
PATIENCE_SECONDS = 5.0

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The adaptive cap in force: stored, or half the ceiling (rounded up) when nothing is stored.
_ADAPTIVE_CAP = """
local function adaptive_cap(key, ceiling)
  local stored = tonumber(redis.call('GET', key)) or math.floor((ceiling + 1) / 2)
  return math.max(1, math.min(stored, ceiling))
end
"""

# Keep the lease set alive at least as long as its newest lease, whatever other workers chose.
_KEEP_LEASES = """
local function keep_leases(key, lease_ms)
  if redis.call('PTTL', key) < lease_ms then redis.call('PEXPIRE', key, lease_ms) end
end
local function note_peak(leases, peak, ttl_ms)
  local held = redis.call('ZCARD', leases)
  if held > (tonumber(redis.call('GET', peak)) or 0) then
    redis.call('SET', peak, held, 'PX', ttl_ms)
  end
  return held
end
"""

# KEYS: leases, cap, peak. ARGV: token, lease_ms, ceiling, adaptive (0|1), state_ttl_ms.
# Returns {admitted (0|1), held, cap}. Idempotent for a token already held, so a retry after a
# lost reply cannot take a second slot.
_ACQUIRE = (
    _NOW
    + _KEEP_LEASES
    + _ADAPTIVE_CAP
    + """
local lease_ms = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = tonumber(ARGV[3])
if ARGV[4] == '1' then cap = adaptive_cap(KEYS[2], cap) end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + lease_ms, ARGV[1])
  keep_leases(KEYS[1], lease_ms)
  return {1, redis.call('ZCARD', KEYS[1]), cap}
end
local held = redis.call('ZCARD', KEYS[1])
if held >= cap then return {0, held, cap} end
redis.call('ZADD', KEYS[1], now + lease_ms, ARGV[1])
keep_leases(KEYS[1], lease_ms)
held = note_peak(KEYS[1], KEYS[3], ARGV[5])
return {1, held, cap}
"""
)

# KEYS: leases, peak. ARGV: token, lease_ms, state_ttl_ms. Returns 1 when the lease had been
# lost (expired, or Redis restarted) and was put back: the request is really in flight, so it
# counts against the cap again even if that briefly overfills it.
_RENEW = (
    _NOW
    + _KEEP_LEASES
    + """
local lease_ms = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local restored = redis.call('ZADD', KEYS[1], now + lease_ms, ARGV[1])
keep_leases(KEYS[1], lease_ms)
if restored == 1 then note_peak(KEYS[1], KEYS[2], ARGV[3]) end
return restored
"""
)

# KEYS: leases, wake. ARGV: token, wake_keep, wake_ttl_ms. Returns 1 when the token was held.
_RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: bucket. ARGV: tokens per ms, capacity. Returns 0 when a token was taken, else the ms
# until one will be there.
_TAKE_TOKEN = (
    _NOW
    + """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate)
  ts = now
end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.max(1, math.ceil((1 - tokens) / rate)) end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', ts)
-- A bucket left alone until it is full again is the same as no bucket.
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate) + 1000)
return wait
"""
)

# KEYS: cap, streak, cooldown, probe. ARGV: ceiling, probe_after, cooldown_ms, state_ttl_ms,
# max_probe_factor, probe_backoff. Returns {action, cap}: action 0 left the cap alone (a
# cool-down was running), 1 halved it, 2 took a failed probe back to the last cap that worked.
_RATE_LIMITED = (
    _ADAPTIVE_CAP
    + """
local ceiling = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local ttl = ARGV[4]
local cap = adaptive_cap(KEYS[1], ceiling)
redis.call('SET', KEYS[2], 0, 'PX', ttl)
local fallback = tonumber(redis.call('HGET', KEYS[4], 'fallback'))
if fallback then
  local need = tonumber(redis.call('HGET', KEYS[4], 'need')) or base
  need = math.min(need * tonumber(ARGV[6]), base * tonumber(ARGV[5]))
  redis.call('HDEL', KEYS[4], 'fallback')
  redis.call('HSET', KEYS[4], 'need', need)
  redis.call('PEXPIRE', KEYS[4], ttl)
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
  cap = math.min(cap, fallback)
  redis.call('SET', KEYS[1], cap, 'PX', ttl)
  return {2, cap}
end
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[3]) then return {0, cap} end
cap = math.max(1, math.floor(cap / 2))
redis.call('SET', KEYS[1], cap, 'PX', ttl)
redis.call('HSET', KEYS[4], 'need', base)
redis.call('PEXPIRE', KEYS[4], ttl)
return {1, cap}
"""
)

# KEYS: cap, streak, wake, probe, cooldown. ARGV: ceiling, probe_after, state_ttl_ms, wake_keep.
# Returns {raised (0|1), cap}. A raise ends the cool-down, so a 429 at the raised cap counts,
# and wakes one waiter, as a release would.
_SUCCESS = (
    _ADAPTIVE_CAP
    + """
local ceiling = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local ttl = ARGV[3]
local cap = adaptive_cap(KEYS[1], ceiling)
local fallback = redis.call('HGET', KEYS[4], 'fallback')
if cap >= ceiling and not fallback then return {0, cap} end
local streak = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ttl)
local need = tonumber(redis.call('HGET', KEYS[4], 'need')) or base
if fallback and streak >= base then
  -- The raised cap held: it is the last that worked, and probing goes on at the usual pace.
  redis.call('HDEL', KEYS[4], 'fallback')
  redis.call('HSET', KEYS[4], 'need', base)
  redis.call('PEXPIRE', KEYS[4], ttl)
  need = base
end
if streak < need or cap >= ceiling then return {0, cap} end
redis.call('HSET', KEYS[4], 'fallback', cap)
redis.call('PEXPIRE', KEYS[4], ttl)
cap = cap + 1
redis.call('SET', KEYS[1], cap, 'PX', ttl)
redis.call('SET', KEYS[2], 0, 'PX', ttl)
redis.call('DEL', KEYS[5])
redis.call('LPUSH', KEYS[3], '1')
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
redis.call('PEXPIRE', KEYS[3], ttl)
return {1, cap}
"""
)

# KEYS: leases. Returns the number of unexpired leases.
_IN_FLIGHT = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)


@dataclass(frozen=True)
class RedisKeys:
    """The Redis keys of one namespace."""

    leases: str
    wake: str
    cap: str
    streak: str
    cooldown: str
    probe: str
    bucket: str
    peak: str

    @classmethod
    def for_namespace(cls, namespace: str) -> RedisKeys:
        """Keys under one hash tag, so a Redis Cluster keeps them in one slot."""
        tag = "{" + namespace + "}"
        return cls(
            leases=f"{tag}:leases",
            wake=f"{tag}:wake",
            cap=f"{tag}:cap",
            streak=f"{tag}:streak",
            cooldown=f"{tag}:cooldown",
            probe=f"{tag}:probe",
            bucket=f"{tag}:bucket",
            peak=f"{tag}:peak",
        )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _log_redis_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None and outcome.failed else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    # The error's type only: its text can carry the host, and a URL can carry a password.
    log.warning("Redis is not answering (%s); retrying in %.2f s", type(exc).__name__, wait)


class RedisLimiter:
    """Limits shared through Redis by every worker that uses the same namespace."""

    def __init__(
        self,
        redis_url_or_client: str | aioredis.Redis,
        config: LimitConfig,
        namespace: str = "rime-batch",
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.5,
        cooldown_seconds: float = COOLDOWN_SECONDS,
    ) -> None:
        if config.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if config.requests_per_minute is not None and config.requests_per_minute < 1:
            raise ValueError("requests_per_minute must be at least 1")
        if config.probe_after < 1:
            raise ValueError("probe_after must be at least 1")
        if lease_seconds <= 0 or poll_seconds <= 0 or cooldown_seconds <= 0:
            raise ValueError("lease, poll and cool-down times must be positive")
        if isinstance(redis_url_or_client, str):
            self._redis = aioredis.Redis.from_url(redis_url_or_client)
            self._owns_client = True
        else:
            self._redis = redis_url_or_client
            self._owns_client = False
        self.config = config
        self.namespace = namespace
        self.keys = RedisKeys.for_namespace(namespace)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.cooldown_seconds = cooldown_seconds
        self._renew_every = lease_seconds / 3
        self._state_ttl_ms = _ms(STATE_TTL_SECONDS)
        # Only one task of this limiter waits in Redis at a time; the rest queue here, in order.
        self._gate = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._renewals: set[asyncio.Event] = set()
        self._acquire_script = self._redis.register_script(_ACQUIRE)
        self._renew_script = self._redis.register_script(_RENEW)
        self._release_script = self._redis.register_script(_RELEASE)
        self._take_script = self._redis.register_script(_TAKE_TOKEN)
        self._rate_limited_script = self._redis.register_script(_RATE_LIMITED)
        self._success_script = self._redis.register_script(_SUCCESS)
        self._in_flight_script = self._redis.register_script(_IN_FLIGHT)

    async def __aenter__(self) -> RedisLimiter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish this limiter's Redis work, then close the client if this limiter created it."""
        for stop in self._renewals:
            stop.set()  # slots still held lapse after lease_seconds
        while self._background:
            await asyncio.wait(list(self._background))
        if self._owns_client:
            await self._redis.aclose()

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Wait for a free slot (and a token when a budget is set); hold it for one request."""
        return self._slot()

    async def on_success(self) -> None:
        """A request completed without a 429: in adaptive mode, count towards a probe."""
        if not self.config.adaptive:
            return
        result = await self._bookkeeping(
            self._success_script,
            [self.keys.cap, self.keys.streak, self.keys.wake, self.keys.probe, self.keys.cooldown],
            [self.config.concurrency, self.config.probe_after, self._state_ttl_ms, self._wake_keep],
        )
        if result is not None and int(result[0]):
            log.info("adaptive cap raised to %d", int(result[1]))

    async def on_rate_limited(self) -> None:
        """Rime answered 429: in adaptive mode, undo a fresh raise, else halve the cap.

        Halving happens once per cool-down window; see `pipeline.limits.Aimd` for the rule.
        """
        if not self.config.adaptive:
            return
        result = await self._bookkeeping(
            self._rate_limited_script,
            [self.keys.cap, self.keys.streak, self.keys.cooldown, self.keys.probe],
            [
                self.config.concurrency,
                self.config.probe_after,
                _ms(self.cooldown_seconds),
                self._state_ttl_ms,
                MAX_PROBE_FACTOR,
                PROBE_BACKOFF,
            ],
        )
        if result is None:
            return
        action, cap = int(result[0]), int(result[1])
        if action == 1:
            log.warning("rate limited: adaptive cap halved to %d", cap)
        elif action == 2:
            log.info("rate limited: probe failed, adaptive cap back to %d", cap)

    async def cap(self) -> int:
        """The concurrency cap in force now, for every worker of this namespace."""
        ceiling = self.config.concurrency
        if not self.config.adaptive:
            return ceiling
        stored = await self._patiently(lambda: self._redis.get(self.keys.cap))
        return start_cap(ceiling) if stored is None else max(1, min(int(stored), ceiling))

    async def in_flight(self) -> int:
        """Slots held now by every worker of this namespace (unexpired leases)."""
        return int(await self._patiently(lambda: self._in_flight_script(keys=[self.keys.leases])))

    async def peak(self) -> int:
        """The most slots ever held at once in this namespace (within the last hour)."""
        stored = await self._patiently(lambda: self._redis.get(self.keys.peak))
        return 0 if stored is None else int(stored)

    async def reset_peak(self) -> None:
        """Start counting the peak afresh (before a benchmark, say)."""
        await self._patiently(lambda: self._redis.delete(self.keys.peak))

    @property
    def _wake_keep(self) -> int:
        # More queued wake-ups than the cap would only cause useless retries.
        return self.config.concurrency

    def _retrying(self, stop: stop_base = stop_never) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception_type(REDIS_DOWN),
            # wait_exponential_jitter's parameters differ across tenacity versions; these do not.
            wait=wait_exponential(multiplier=0.05, max=2.0) + wait_random(0, 0.2),
            stop=stop,
            before_sleep=_log_redis_retry,
            reraise=True,
        )

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run Redis work in a task of its own, kept until it ends (aclose waits for it)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Its caller was cancelled and will never look; don't let the error vanish.
            log.debug("Redis work failed after its caller left", exc_info=task.exception())

    async def _shielded(self, work: Coroutine[Any, Any, T]) -> T:
        """Await Redis work that a cancelled caller leaves to finish in the background.

        redis-py can lose track of a connection, or hang, when a task is cancelled while it
        waits for a reply; so no Redis command of this limiter is ever cancelled.
        """
        return await asyncio.shield(self._spawn(work))

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        token = secrets.token_hex(16)
        abandoned = asyncio.Event()
        try:
            await asyncio.shield(self._spawn(self._acquire(token, abandoned)))
        except BaseException:
            # The acquisition stops after its current command and gives back a slot it got.
            abandoned.set()
            raise
        stop = asyncio.Event()
        self._renewals.add(stop)
        renewer = self._spawn(self._renew_until(token, stop))
        try:
            if self.config.requests_per_minute:
                await self._take_token(self.config.requests_per_minute)
            yield
        except RateLimited:
            # Lower the cap before the slot goes back: the waiter its release wakes would
            # otherwise be admitted under the cap just refused, and be refused in turn. The
            # caller's own report follows within the cool-down, which absorbs it.
            await self.on_rate_limited()
            raise
        finally:
            stop.set()
            self._renewals.discard(stop)
            await self._shielded(self._release_after(renewer, token))

    async def _acquire(self, token: str, abandoned: asyncio.Event) -> None:
        args: list[EncodableT] = [
            token,
            _ms(self.lease_seconds),
            self.config.concurrency,
            1 if self.config.adaptive else 0,
            self._state_ttl_ms,
        ]
        keys = [self.keys.leases, self.keys.cap, self.keys.peak]
        async with self._gate:
            async for attempt in self._retrying():
                with attempt:
                    while not abandoned.is_set():
                        admitted, _, _ = await self._acquire_script(keys=keys, args=args)
                        if int(admitted):
                            if abandoned.is_set():
                                await self._release(token)
                            return
                        # Woken by a release or a raised cap; the timeout bounds the wait so
                        # that leases of dead workers, which expire silently, are reclaimed.
                        await self._redis.blpop([self.keys.wake], timeout=self.poll_seconds)

    async def _take_token(self, per_minute: int) -> None:
        args = [per_minute / 60_000.0, bucket_capacity(per_minute)]

        def take() -> Awaitable[Any]:
            return self._take_script(keys=[self.keys.bucket], args=args)

        while (wait_ms := int(await self._shielded(self._forever(take)))) > 0:
            await asyncio.sleep(wait_ms / 1000)

    async def _renew_until(self, token: str, stop: asyncio.Event) -> None:
        keys = [self.keys.leases, self.keys.peak]
        args: list[EncodableT] = [token, _ms(self.lease_seconds), self._state_ttl_ms]
        delay = self._renew_every
        while not await _is_set_within(stop, delay):
            try:
                restored = int(await self._renew_script(keys=keys, args=args))
            except Exception as exc:
                # Whatever went wrong, keep renewing: a dead renewer silently frees the slot.
                log.warning("could not renew a lease (%s); retrying", type(exc).__name__)
                log.debug("renewal failed", exc_info=True)
                # Try again sooner than usual: the lease is running out meanwhile.
                delay = min(self._renew_every, 0.5)
                continue
            delay = self._renew_every
            if restored:
                log.warning("a lease had been lost (expired, or Redis restarted); restored it")

    async def _release_after(self, renewer: asyncio.Task[None], token: str) -> None:
        # Only once the renewer has stopped can it no longer put the lease back.
        await asyncio.wait([renewer])
        await self._release(token)

    async def _release(self, token: str) -> None:
        await self._bookkeeping(
            self._release_script,
            [self.keys.leases, self.keys.wake],
            [token, self._wake_keep, _ms(self.lease_seconds)],
        )

    async def _forever(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await `call()`, retrying for as long as Redis is not answering."""
        async for attempt in self._retrying():
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _with_patience(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await `call()`, retrying for a few seconds while Redis is not answering."""
        async for attempt in self._retrying(stop_after_delay(PATIENCE_SECONDS)):
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _patiently(self, call: Callable[[], Awaitable[T]]) -> T:
        return await self._shielded(self._with_patience(call))

    async def _bookkeeping(
        self, script: AsyncScript, keys: list[str], args: list[EncodableT]
    ) -> Any:
        """Run a script patiently; on giving up log it and return None (never raise)."""
        try:
            return await self._patiently(lambda: script(keys=keys, args=args))
        except REDIS_DOWN as exc:
            log.warning("Redis is not answering (%s); skipped an update", type(exc).__name__)
            return None


async def _is_set_within(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; whether it is set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True
