"""One set of limits shared by every worker on every host, held in Redis.

`RedisLimiter` implements `pipeline.limits.Limiter` for the Celery workers: the concurrency cap,
the requests-per-minute budget and the adaptive cap of one Rime account live in Redis, so that
the sum over all workers obeys them. The adaptive cap and the budget are the very rules of the
local limiter (`pipeline.limits.aimd`, `pipeline.limits.bucket`), applied in Python to a state
kept in Redis by an optimistic transaction (`pipeline.limits.redis_state`) on the clock of Redis
`TIME`, so the hosts' clocks do not matter. Admission is Lua bookkeeping
(`pipeline.limits.lua`). A 429 (`RateLimited`) raised inside a slot is reported before the
slot is released.

Keys, all under one hash tag so that a cluster keeps them in one slot (`{ns}` below):

    {ns}:leases    sorted set: one random token per held slot, scored by its expiry (ms)
    {ns}:wake      list: one entry pushed per freed slot or raised cap, popped by a waiter
    {ns}:adaptive  adaptive mode, hash: the `AimdState` (its `cap` is what admission reads;
                   absent means half the configured ceiling) and a `version` for the
                   transaction; forgotten after an hour without an outcome reported
    {ns}:budget    hash: the `BucketState` of the per-minute budget, and its `version`;
                   gone once it would have refilled, the same as a full bucket
    {ns}:peak      the most slots ever held at once (for tests and benchmarks)

A slot is a lease: a worker that dies without releasing it loses it after `lease_seconds`,
while a live holder renews it every third of that. Waiting for a slot blocks on `{ns}:wake`
with BLPOP for at most `poll_seconds`, so a freed slot is handed over at once and an expired
lease is still noticed within a poll. Inside one limiter only one task waits in Redis at a
time; the others queue behind it in order, so a busy process needs one blocking connection.
Per slot, a fixed cap with no budget costs one round trip to acquire and one to release.

Redis going away is waited out: connection errors while acquiring (a slot, or a token of the
budget) are retried with backoff forever, while renewals, releases and outcome reports log and
carry on. After a restart the lease set is empty and counting starts over; a live holder's next
renewal puts its lease back.

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
from redis.typing import EncodableT
from tenacity import stop_after_delay

from pipeline.limits import lua
from pipeline.limits.aimd import AimdRule, AimdState
from pipeline.limits.bucket import BucketRule, BucketState
from pipeline.limits.config import LimitConfig
from pipeline.limits.redis_retry import REDIS_DOWN, redis_call
from pipeline.limits.redis_state import Change, RedisState
from pipeline.rime.errors import RateLimited

log = logging.getLogger(__name__)
T = TypeVar("T")

# The adaptive state is forgotten after an hour without an outcome reported, and the peak after
# an hour without a new one, so a new run on a quiet account starts afresh (at half the
# configured cap) rather than at an old halving.
STATE_TTL_SECONDS = 3600.0
# Outcome reports, releases and readings give up this soon when Redis is away: a lost release
# only means the lease runs out by itself.
PATIENCE_SECONDS = 5.0
# A bucket's hash outlives its refill by this much, so it never vanishes while still short.
BUCKET_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class RedisKeys:
    """The Redis keys of one namespace."""

    leases: str
    wake: str
    adaptive: str
    budget: str
    peak: str

    @classmethod
    def for_namespace(cls, namespace: str) -> RedisKeys:
        """Keys under one hash tag, so a Redis Cluster keeps them in one slot."""
        tag = "{" + namespace + "}"
        return cls(
            leases=f"{tag}:leases",
            wake=f"{tag}:wake",
            adaptive=f"{tag}:adaptive",
            budget=f"{tag}:budget",
            peak=f"{tag}:peak",
        )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _raised(before: AimdState, after: AimdState) -> bool:
    return after.cap > before.cap


class RedisLimiter:
    """Limits shared through Redis by every worker that uses the same namespace.

    `clock` replaces Redis `TIME` for the adaptive cap and the budget, and `sleep` the waits
    for a token (both for tests).
    """

    def __init__(
        self,
        redis_url_or_client: str | aioredis.Redis,
        config: LimitConfig,
        namespace: str = "rime-batch",
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.5,
        cooldown_seconds: float | None = None,
        state_ttl_seconds: float = STATE_TTL_SECONDS,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        cooldown = config.cooldown_seconds if cooldown_seconds is None else cooldown_seconds
        if config.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if config.requests_per_minute is not None and config.requests_per_minute < 1:
            raise ValueError("requests_per_minute must be at least 1")
        if config.probe_after < 1:
            raise ValueError("probe_after must be at least 1")
        if lease_seconds <= 0 or poll_seconds <= 0 or cooldown <= 0 or state_ttl_seconds <= 0:
            raise ValueError("lease, poll, cool-down and state times must be positive")
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
        self.cooldown_seconds = cooldown
        self._renew_every = lease_seconds / 3
        self._state_ttl_ms = _ms(state_ttl_seconds)
        self._sleep = sleep
        # Only one task of this limiter waits in Redis at a time; the rest queue here, in order.
        self._gate = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._renewals: set[_Renewal] = set()
        self._closing = False  # no renewal is scheduled once aclose has begun
        self._acquire_script = self._redis.register_script(lua.ACQUIRE)
        self._renew_script = self._redis.register_script(lua.RENEW)
        self._release_script = self._redis.register_script(lua.RELEASE)
        self._in_flight_script = self._redis.register_script(lua.IN_FLIGHT)
        self._aimd = AimdRule(config.concurrency, config.probe_after, cooldown)
        # Everything the admission script is told but the token: the same for every slot.
        self._admission: list[EncodableT] = [
            _ms(lease_seconds),
            config.concurrency,
            1 if config.adaptive else 0,
            self._aimd.start().cap,
            self._state_ttl_ms,
        ]
        self._adaptive = RedisState(
            self._redis,
            self.keys.adaptive,
            AimdState,
            lambda _: self._aimd.start(),
            ttl_seconds=state_ttl_seconds,
            # Every report keeps the state alive, even one that changes nothing (at the ceiling).
            touch=True,
            wake_key=self.keys.wake,
            wake_keep=self._wake_keep,
            clock=clock,
        )
        self._budget: tuple[BucketRule, RedisState[BucketState]] | None = None
        if config.requests_per_minute:
            rule = BucketRule(config.requests_per_minute)
            bucket = RedisState(
                self._redis,
                self.keys.budget,
                BucketState,
                rule.start,
                ttl_seconds=rule.refill_seconds + BUCKET_MARGIN_SECONDS,
                wake_key=self.keys.wake,
                clock=clock,
            )
            self._budget = rule, bucket

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
        self._closing = True
        for renewal in list(self._renewals):
            renewal.stop()  # slots still held lapse after lease_seconds
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
        change = await self._report(lambda state, _: self._aimd.success(state))
        if change is not None and _raised(change.before, change.after):
            log.info("adaptive cap raised to %d", change.after.cap)

    async def on_rate_limited(self) -> None:
        """Rime answered 429: in adaptive mode, undo a fresh raise, else halve the cap.

        Halving happens once per cool-down window; see `pipeline.limits.aimd` for the rule.
        """
        if not self.config.adaptive:
            return
        change = await self._report(self._aimd.rate_limited)
        if change is None:
            return
        before, after = change.before, change.after
        if before.fallback is not None:
            log.info("rate limited: probe failed, adaptive cap back to %d", after.cap)
        elif after.cooldown_until != before.cooldown_until:
            log.warning("rate limited: adaptive cap halved to %d", after.cap)

    async def cap(self) -> int:
        """The concurrency cap in force now, for every worker of this namespace."""
        if not self.config.adaptive:
            return self.config.concurrency
        state = await self._patiently(self._adaptive.read)
        return self._aimd.bounded(state).cap

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
        renewal = _Renewal(self, token)
        self._renewals.add(renewal)
        try:
            if self._budget is not None:
                await self._take_token(*self._budget)
            yield
        except RateLimited:
            # Lower the cap before the slot goes back: the waiter its release wakes would
            # otherwise be admitted under the cap just refused, and be refused in turn. The
            # caller's own report follows within the cool-down, which absorbs it.
            await self.on_rate_limited()
            raise
        finally:
            self._renewals.discard(renewal)
            await self._shielded(self._release_after(renewal, token))

    async def _acquire(self, token: str, abandoned: asyncio.Event) -> None:
        args = [token, *self._admission]
        keys = [self.keys.leases, self.keys.adaptive, self.keys.peak]

        async def admitted() -> None:
            while not abandoned.is_set():
                admitted, _, _ = await self._acquire_script(keys=keys, args=args)
                if int(admitted):
                    if abandoned.is_set():
                        await self._release(token)
                    return
                # Woken by a release or a raised cap; the timeout bounds the wait so that
                # leases of dead workers, which expire silently, are reclaimed.
                await self._redis.blpop([self.keys.wake], timeout=self.poll_seconds)

        async with self._gate:
            await redis_call(admitted, log)

    async def _take_token(self, rule: BucketRule, bucket: RedisState[BucketState]) -> None:
        async def take() -> float:
            return (await bucket.change(rule.take)).result

        while (wait := await self._shielded(redis_call(take, log))) > 0:
            await self._sleep(wait)

    async def _report(
        self, outcome: Callable[[AimdState, float], AimdState]
    ) -> Change[AimdState, None] | None:
        """Apply an outcome's transition to the adaptive state (a raised cap wakes a waiter)."""

        def transition(state: AimdState, now: float) -> tuple[AimdState, None]:
            return outcome(self._aimd.bounded(state), now), None

        # Shielded here: a report runs in its caller's task, which may be cancelled.
        return await self._shielded(
            self._bookkeeping(lambda: self._adaptive.change(transition, wake=_raised))
        )

    async def _renew(self, token: str) -> float:
        """Renew one lease; the seconds until the next renewal."""
        keys = [self.keys.leases, self.keys.peak]
        args: list[EncodableT] = [token, _ms(self.lease_seconds), self._state_ttl_ms]
        try:
            restored = int(await self._renew_script(keys=keys, args=args))
        except Exception as exc:
            # Whatever went wrong, keep renewing: a dead renewer silently frees the slot.
            log.warning("could not renew a lease (%s); retrying", type(exc).__name__)
            log.debug("renewal failed", exc_info=True)
            # Try again sooner than usual: the lease is running out meanwhile.
            return min(self._renew_every, 0.5)
        if restored:
            log.warning("a lease had been lost (expired, or Redis restarted); restored it")
        return self._renew_every

    async def _release_after(self, renewal: _Renewal, token: str) -> None:
        # Only once the renewals have stopped can none put the lease back.
        await renewal.stopped()
        await self._release(token)

    async def _release(self, token: str) -> None:
        # Always run inside a shielded task already (the slot's exit, or an acquisition).
        await self._bookkeeping(
            lambda: self._release_script(
                keys=[self.keys.leases, self.keys.wake],
                args=[token, self._wake_keep, _ms(self.lease_seconds)],
            )
        )

    async def _patiently(self, call: Callable[[], Awaitable[T]]) -> T:
        return await self._shielded(redis_call(call, log, stop_after_delay(PATIENCE_SECONDS)))

    async def _bookkeeping(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """Await `call()`, retrying for a few seconds while Redis is not answering; on giving up
        log it and return None (never raise). Not shielded: run it in a task that is."""
        try:
            return await redis_call(call, log, stop_after_delay(PATIENCE_SECONDS))
        except REDIS_DOWN as exc:
            log.warning("Redis is not answering (%s); skipped an update", type(exc).__name__)
            return None


class _Renewal:
    """Renews one slot's lease every third of its lifetime until stopped.

    A timer while nothing is due, not a task: most slots are held for a fraction of a period,
    and a task per slot cost more than both of its Redis round trips."""

    def __init__(self, limiter: RedisLimiter, token: str) -> None:
        self._limiter = limiter
        self._token = token
        self._loop = asyncio.get_running_loop()
        self._running: asyncio.Task[None] | None = None
        self._done = False
        self._timer: asyncio.TimerHandle | None = None
        self._schedule(limiter._renew_every)

    def _schedule(self, delay: float) -> None:
        # A slot acquired while the limiter closes is not renewed: it lapses like the rest.
        if not self._done and not self._limiter._closing:
            self._timer = self._loop.call_later(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        self._running = self._limiter._spawn(self._run())

    async def _run(self) -> None:
        self._schedule(await self._limiter._renew(self._token))

    def stop(self) -> None:
        """Schedule no further renewal."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def stopped(self) -> None:
        """Stop, and wait for a renewal already under way."""
        self.stop()
        if self._running is not None:
            await asyncio.wait([self._running])
