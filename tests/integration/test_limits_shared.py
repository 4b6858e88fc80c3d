"""RedisLimiter against the real Redis: one cap for many processes, leases, budget, AIMD."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from pipeline.limits import LimitConfig
from pipeline.limits.bucket import bucket_capacity
from pipeline.limits.shared import RedisLimiter
from pipeline.rime.errors import RateLimited
from tests.fixtures.services import PrivateRedis, poll_until, require_binary

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
HOLDER = (
    "import sys; from tests.integration.test_limits_shared import holder_main; "
    "holder_main(sys.argv[1])"
)


def _namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


# --- child processes -------------------------------------------------------------------------


def holder_main(spec_json: str) -> None:
    """Entry point of a child process: contend for slots, or hold one until killed."""
    spec = json.loads(spec_json)
    asyncio.run(_contend(spec) if spec["mode"] == "contend" else _hold(spec))


async def _wait_for_go(client: aioredis.Redis, namespace: str) -> None:
    # A barrier, so the processes contend together rather than one after another.
    await client.incr(f"{namespace}:test:ready")
    while not await client.exists(f"{namespace}:test:go"):
        await asyncio.sleep(0.01)


async def _contend(spec: dict[str, Any]) -> None:
    config = LimitConfig(concurrency=spec["cap"], adaptive=False)
    client = aioredis.Redis.from_url(spec["url"])
    limiter = RedisLimiter(client, config, namespace=spec["namespace"], lease_seconds=5.0)
    intervals: list[tuple[float, float]] = []

    async def worker() -> None:
        for _ in range(spec["rounds"]):
            async with limiter.slot():
                # time.monotonic is one clock for every process on this host (CLOCK_MONOTONIC).
                entered = time.monotonic()
                await asyncio.sleep(random.uniform(0.02, 0.05))
                intervals.append((entered, time.monotonic()))

    await _wait_for_go(client, spec["namespace"])
    await asyncio.gather(*(worker() for _ in range(spec["tasks"])))
    Path(spec["out"]).write_text(json.dumps(intervals))
    await client.aclose()


async def _hold(spec: dict[str, Any]) -> None:
    config = LimitConfig(concurrency=spec["cap"], adaptive=False)
    client = aioredis.Redis.from_url(spec["url"])
    limiter = RedisLimiter(client, config, namespace=spec["namespace"], lease_seconds=spec["lease"])
    async with limiter.slot():
        await client.set(f"{spec['namespace']}:test:held", "1")
        await asyncio.sleep(60)  # until SIGKILL; bounded in case the test dies first


def _spawn(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", HOLDER, json.dumps(spec)], cwd=ROOT, env=env)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an exit at t counts before an entry at t)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    open_now = peak = 0
    for _, delta in events:
        open_now += delta
        peak = max(peak, open_now)
    return peak


def test_max_overlap_counts_open_intervals() -> None:
    assert max_overlap([(0, 2), (1, 3), (2, 4)]) == 2
    assert max_overlap([(0, 1), (1, 2)]) == 1
    assert max_overlap([(0, 5), (1, 2), (1.5, 3), (4, 6)]) == 3


# --- the cap across processes ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_processes_never_hold_more_than_the_cap_together(redis_url: str, tmp_path: Path) -> None:
    namespace, cap, processes = _namespace(), 4, 3
    outs = [tmp_path / f"holder-{i}.json" for i in range(processes)]
    spec = {"mode": "contend", "url": redis_url, "namespace": namespace, "cap": cap}
    children = [_spawn({**spec, "tasks": 8, "rounds": 4, "out": str(out)}) for out in outs]
    client = redis.Redis.from_url(redis_url)
    try:
        poll_until(
            lambda: int(client.get(f"{namespace}:test:ready") or 0) == processes, 30, "ready"
        )
        client.set(f"{namespace}:test:go", "1")
        for child in children:
            assert child.wait(timeout=40) == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    intervals = [tuple(pair) for out in outs for pair in json.loads(out.read_text())]
    assert len(intervals) == processes * 8 * 4
    assert max_overlap(intervals) == cap  # never above, and actually reached
    busy = sum(b - a for a, b in intervals)
    span = max(b for _, b in intervals) - min(a for a, _ in intervals)
    assert busy / (cap * span) > 0.5, "slots sat idle while tasks were waiting"
    assert int(client.get(f"{{{namespace}}}:peak") or 0) == cap
    assert client.zcard(f"{{{namespace}}}:leases") == 0  # every lease released
    client.close()


@pytest.mark.timeout(60)
def test_a_killed_holders_lease_expires_and_others_proceed(redis_url: str) -> None:
    namespace, lease = _namespace(), 1.5
    config = LimitConfig(concurrency=1, adaptive=False)
    child = _spawn(
        {"mode": "hold", "url": redis_url, "namespace": namespace, "cap": 1, "lease": lease}
    )
    client = redis.Redis.from_url(redis_url)

    async def acquire_once(limiter: RedisLimiter) -> float:
        async with limiter.slot():
            return time.monotonic()

    async def scenario() -> float:
        async with RedisLimiter(redis_url, config, namespace=namespace, lease_seconds=lease) as lim:
            # The holder renews its lease, so it keeps the slot for longer than one lease.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(acquire_once(lim), timeout=lease * 1.7)
            assert await lim.in_flight() == 1  # the cancelled wait left no lease behind
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            killed = time.monotonic()
            acquired = await asyncio.wait_for(acquire_once(lim), timeout=10)
            assert await lim.in_flight() == 0
            return acquired - killed

    try:
        poll_until(lambda: client.exists(f"{namespace}:test:held"), 30, "the holder's slot")
        waited = asyncio.run(scenario())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        client.close()
    # Its last renewal was at most lease/3 before the kill; then a poll (0.5 s) to notice.
    assert lease - lease / 3 - 0.2 <= waited <= lease + 0.5 + 1.0


@pytest.mark.timeout(60)
def test_cancelled_waits_return_at_once_and_leave_nothing_behind(redis_url: str) -> None:
    config = LimitConfig(concurrency=2, adaptive=False)
    namespace = _namespace()

    async def scenario() -> None:
        holder = RedisLimiter(redis_url, config, namespace=namespace)
        # A poll far longer than the test: a cancelled wait that sat out its poll (or its
        # round trip's reply) before returning would take minutes, not the deadline below.
        waiter = RedisLimiter(redis_url, config, namespace=namespace, poll_seconds=600)
        async with AsyncExitStack() as held:
            for _ in range(2):
                await held.enter_async_context(holder.slot())
            async with asyncio.timeout(30):
                for patience in [random.uniform(0.0, 0.15) for _ in range(25)]:
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(held.enter_async_context(waiter.slot()), patience)
            assert await waiter.in_flight() == 2
        await waiter.aclose()  # waits for the abandoned polls to end
        assert await holder.in_flight() == 0
        # No lease leaked: a fresh limiter gets the whole cap.
        fresh = RedisLimiter(redis_url, config, namespace=namespace)
        async with fresh.slot(), fresh.slot():
            assert await fresh.in_flight() == 2
        assert await fresh.in_flight() == 0
        await holder.aclose()
        await fresh.aclose()

    asyncio.run(scenario())


# --- requests-per-minute budget --------------------------------------------------------------


@pytest.mark.timeout(30)
def test_the_budget_admits_the_burst_then_the_rate(redis_url: str) -> None:
    per_minute, window = 600, 2.0
    config = LimitConfig(concurrency=100, requests_per_minute=per_minute, adaptive=False)
    namespace = _namespace()
    admitted: list[float] = []

    async def worker(limiter: RedisLimiter) -> None:
        while True:
            async with limiter.slot():
                admitted.append(time.monotonic())

    async def scenario() -> float:
        # Two limiters with their own connections stand for two hosts.
        limiters = [RedisLimiter(redis_url, config, namespace=namespace) for _ in range(2)]
        start = time.monotonic()
        tasks = [asyncio.create_task(worker(lim)) for lim in limiters for _ in range(20)]
        await asyncio.sleep(window)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert await limiters[0].in_flight() == 0
        for lim in limiters:
            await lim.aclose()
        return start

    start = asyncio.run(scenario())
    burst, rate = bucket_capacity(per_minute), per_minute / 60
    in_window = [t - start for t in admitted if t - start < window]
    assert burst + rate * window - 3 <= len(in_window) <= burst + rate * window + 2
    assert burst <= sum(1 for t in in_window if t < 0.4) <= burst + 4
    steady = sum(1 for t in in_window if 0.5 <= t < window)
    assert rate * 1.5 - 3 <= steady <= rate * 1.5 + 2


@pytest.mark.timeout(30)
def test_state_left_by_an_older_release_is_ignored(redis_url: str) -> None:
    # Older releases kept the rules' state in other keys, or in other fields under the same
    # name ({ns}:bucket); workers of both may share a namespace during a rolling upgrade.
    namespace = _namespace()
    client = redis.Redis.from_url(redis_url)
    tag = "{" + namespace + "}"
    client.hset(f"{tag}:bucket", mapping={"tokens": "0", "ts": "1"})
    client.set(f"{tag}:cap", "1")
    client.close()
    config = LimitConfig(concurrency=4, requests_per_minute=60, adaptive=True)

    async def scenario() -> tuple[int, int]:
        async with RedisLimiter(redis_url, config, namespace) as lim, lim.slot(), lim.slot():
            return await lim.cap(), await lim.in_flight()

    assert asyncio.run(scenario()) == (2, 2)


class Refused(Exception):
    """A wait for a token, refused by the test's sleep instead of slept."""


@pytest.mark.timeout(30)
def test_concurrent_takes_never_overspend_the_budget(redis_url: str) -> None:
    # Three workers at one frozen instant: the burst of 10 is taken once between them, not more.
    config = LimitConfig(concurrency=100, requests_per_minute=60, adaptive=False)
    namespace = _namespace()
    waits: list[float] = []

    async def refuse(seconds: float) -> None:
        waits.append(seconds)
        raise Refused

    async def scenario() -> int:
        limiters = [
            RedisLimiter(redis_url, config, namespace, clock=lambda: 1000.0, sleep=refuse)
            for _ in range(3)
        ]
        admitted = 0

        async def one(limiter: RedisLimiter) -> None:
            nonlocal admitted
            with contextlib.suppress(Refused):
                async with limiter.slot():
                    admitted += 1

        await asyncio.gather(*(one(lim) for lim in limiters for _ in range(10)))
        assert await limiters[0].in_flight() == 0
        for lim in limiters:
            await lim.aclose()
        return admitted

    assert asyncio.run(scenario()) == 10
    assert waits == [pytest.approx(1.0)] * 20  # one a second, and none had come yet


# --- adaptive cap ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_adaptive_cap_halves_once_per_window_and_probes_back(redis_url: str) -> None:
    config = LimitConfig(concurrency=16, adaptive=True, probe_after=3)
    namespace = _namespace()

    async def scenario() -> None:
        workers = [
            RedisLimiter(redis_url, config, namespace=namespace, cooldown_seconds=1.0)
            for _ in range(5)
        ]
        first = workers[0]
        assert await first.cap() == 8  # half the ceiling, so the start does not flood

        # Five workers hit 429 at once: one halving, and more 429s in the window change nothing.
        await asyncio.gather(*(w.on_rate_limited() for w in workers))
        assert [await w.cap() for w in workers] == [4] * 5
        await asyncio.gather(*(w.on_rate_limited() for w in workers))
        assert await first.cap() == 4

        # After the window a 429 halves again; a 429 inside the new window breaks the streak.
        await asyncio.sleep(1.1)
        await workers[1].on_rate_limited()
        assert await first.cap() == 2
        for w in workers[:2]:
            await w.on_success()
        await workers[2].on_rate_limited()
        for w in workers[:2]:
            await w.on_success()
        assert await first.cap() == 2
        await workers[3].on_success()
        assert await first.cap() == 3

        # The lowered cap is what every worker is admitted under.
        async with AsyncExitStack() as held:
            for w in workers[:3]:
                await held.enter_async_context(w.slot())
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(held.enter_async_context(workers[3].slot()), 0.3)
            assert await first.in_flight() == 3

            # A raised cap wakes a waiter, which would otherwise sleep out a ten-minute poll.
            patient = RedisLimiter(redis_url, config, namespace=namespace, poll_seconds=600)
            waiter = asyncio.create_task(held.enter_async_context(patient.slot()))
            await asyncio.sleep(0.2)
            assert not waiter.done()
            for w in workers[:3]:
                await w.on_success()
            await asyncio.wait_for(waiter, 30)
            assert await first.cap() == 4
            assert await first.in_flight() == 4
        assert await first.in_flight() == 0

        # A 429 right after a raise is a failed probe: back to the last cap that worked (3, not
        # a halving to 2), a window in which further 429s change nothing, and the next probe
        # only after four times the successes.
        await workers[4].on_rate_limited()
        assert await first.cap() == 3
        await workers[0].on_rate_limited()
        assert await first.cap() == 3
        for _ in range(11):
            await workers[1].on_success()
        assert await first.cap() == 3
        await workers[1].on_success()
        assert await first.cap() == 4

        # Once a raise holds for a full streak, probing goes on at the usual pace, up to the
        # configured cap and no further.
        for _ in range(3 + 3 * 12):
            await workers[0].on_success()
        assert await first.cap() == 16
        for _ in range(6):
            await workers[0].on_success()
        assert await first.cap() == 16

        # With no probe pending a 429 is contention, and halves at once: the raises had ended
        # the window of the failed probe.
        await workers[2].on_rate_limited()
        assert await first.cap() == 8
        assert await first.peak() == 4
        for w in [*workers, patient]:
            await w.aclose()

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_repeated_failed_probes_wait_ever_longer_up_to_sixteen_times(redis_url: str) -> None:
    # probe_after 1: each failed probe quadruples the successes due, up to 16.
    config = LimitConfig(concurrency=4, adaptive=True, probe_after=1)

    async def scenario() -> list[int]:
        async with RedisLimiter(redis_url, config, namespace=_namespace()) as limiter:
            assert await limiter.cap() == 2
            waits = []
            for _ in range(5):
                successes = 0
                while await limiter.cap() == 2:
                    await limiter.on_success()
                    successes += 1
                waits.append(successes)
                await limiter.on_rate_limited()  # each probe to 3 fails
                assert await limiter.cap() == 2
            return waits

    assert asyncio.run(scenario()) == [1, 4, 16, 16, 16]


@pytest.mark.timeout(30)
def test_a_429_inside_a_slot_lowers_the_cap_before_the_slot_is_handed_on(redis_url: str) -> None:
    config = LimitConfig(concurrency=4, adaptive=True, probe_after=1)
    namespace = _namespace()

    async def refused(limiter: RedisLimiter, go: asyncio.Event) -> None:
        async with limiter.slot():
            await go.wait()
            raise RateLimited("too many concurrent requests")

    async def scenario() -> tuple[int, int, int, int]:
        async with (
            RedisLimiter(redis_url, config, namespace=namespace) as holder,
            RedisLimiter(redis_url, config, namespace=namespace) as other,
        ):
            await holder.on_success()  # a probe: 2 -> 3
            assert await holder.cap() == 3
            async with AsyncExitStack() as held:
                for _ in range(2):
                    await held.enter_async_context(holder.slot())
                go = asyncio.Event()
                probe = asyncio.create_task(refused(holder, go))
                while await holder.in_flight() < 3:
                    await asyncio.sleep(0.01)
                waiter = asyncio.create_task(held.enter_async_context(other.slot()))
                await asyncio.sleep(0.2)  # the waiter is blocked in Redis
                go.set()
                with pytest.raises(RateLimited):
                    await probe
                await asyncio.sleep(0.3)
                admitted_early = waiter.done()
                in_flight = await holder.in_flight()
                await holder.on_rate_limited()  # the caller's own report: absorbed
                cap = await holder.cap()
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
            return int(admitted_early), in_flight, cap, await other.in_flight()

    # The freed slot did not go to the waiter: the failed probe had taken the cap back to 2.
    assert asyncio.run(scenario()) == (0, 2, 2, 0)


def test_without_adaptive_mode_429s_leave_the_cap_alone(redis_url: str) -> None:
    config = LimitConfig(concurrency=3, adaptive=False)

    async def scenario() -> tuple[int, int]:
        async with RedisLimiter(redis_url, config, namespace=_namespace()) as limiter:
            for _ in range(3):
                await limiter.on_rate_limited()
            async with AsyncExitStack() as held:
                for _ in range(3):
                    await held.enter_async_context(limiter.slot())
                return await limiter.cap(), await limiter.in_flight()

    assert asyncio.run(scenario()) == (3, 3)


@pytest.mark.timeout(30)
def test_concurrent_reports_from_many_workers_lose_no_update(redis_url: str) -> None:
    # probe_after 1: every success raises the cap by one, so a lost update would show in it.
    config = LimitConfig(concurrency=64, adaptive=True, probe_after=1)
    namespace = _namespace()

    async def scenario() -> int:
        workers = [RedisLimiter(redis_url, config, namespace) for _ in range(4)]
        await asyncio.gather(*(w.on_success() for w in workers for _ in range(5)))
        cap = await workers[0].cap()
        for w in workers:
            await w.aclose()
        return cap

    assert asyncio.run(scenario()) == 32 + 4 * 5


def test_a_slot_acquired_while_the_limiter_closes_is_not_renewed_after(redis_url: str) -> None:
    config = LimitConfig(concurrency=1, adaptive=False)
    namespace = _namespace()

    async def scenario() -> int:
        limiter = RedisLimiter(redis_url, config, namespace, lease_seconds=0.6, poll_seconds=0.1)
        first_in, second_in, leave = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def hold(entered: asyncio.Event, until: asyncio.Event) -> None:
            async with limiter.slot():
                entered.set()
                await until.wait()

        first = asyncio.create_task(hold(first_in, leave))
        await first_in.wait()
        second = asyncio.create_task(hold(second_in, asyncio.Event()))  # held for ever
        await asyncio.sleep(0.2)  # waiting for the slot in Redis
        closing = asyncio.create_task(limiter.aclose())
        await asyncio.sleep(0.05)
        leave.set()  # the waiter gets the slot while the limiter is closing
        await asyncio.wait_for(second_in.wait(), 5)
        await asyncio.wait_for(closing, 5)
        await first
        await asyncio.sleep(1.5)  # more than two lease lifetimes, four renewal periods
        reader = RedisLimiter(redis_url, config, namespace)
        held = await reader.in_flight()
        await reader.aclose()
        second.cancel()
        return held

    assert asyncio.run(scenario()) == 0


def test_a_report_whose_caller_is_cancelled_still_lands(redis_url: str) -> None:
    # A report runs in its caller's task; a heartbeat that finds the claim lost cancels that
    # task mid-command, and a Redis command must never be cut off halfway.
    config = LimitConfig(concurrency=64, adaptive=True, probe_after=1)

    async def scenario() -> int:
        limiter = RedisLimiter(redis_url, config, _namespace())
        for _ in range(3):
            report = asyncio.create_task(limiter.on_success())
            await asyncio.sleep(0)  # under way: waiting for Redis
            report.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await report
        await limiter.aclose()  # waits for what the cancelled callers left running
        reader = RedisLimiter(redis_url, config, limiter.namespace)
        cap = await reader.cap()
        await reader.aclose()
        return cap

    assert asyncio.run(scenario()) == 32 + 3


@pytest.mark.timeout(30)
def test_the_adaptive_state_is_forgotten_only_after_an_idle_spell(redis_url: str) -> None:
    # A state lifetime of 0.5 s stands for the hour. Busy at the ceiling, where a success
    # changes nothing, the cap stays; after a spell with no outcome reported, it starts over.
    config = LimitConfig(concurrency=4, adaptive=True, probe_after=1)

    async def scenario() -> list[int]:
        async with RedisLimiter(redis_url, config, _namespace(), state_ttl_seconds=0.5) as lim:
            for _ in range(3):
                await lim.on_success()  # 2 -> 3 -> 4, and 4 held
            caps = [await lim.cap()]
            for _ in range(6):
                await asyncio.sleep(0.2)
                await lim.on_success()
                caps.append(await lim.cap())
            await asyncio.sleep(0.8)
            caps.append(await lim.cap())
            return caps

    assert asyncio.run(scenario()) == [4] * 7 + [2]


# --- Redis going away ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_waits_out_a_redis_that_is_down_and_survives_a_restart(tmp_path: Path) -> None:
    require_binary("redis-server")
    server = PrivateRedis(tmp_path)
    config = LimitConfig(concurrency=2, adaptive=False)

    async def scenario() -> None:
        limiter = RedisLimiter(server.url, config, namespace=_namespace(), lease_seconds=1.5)
        got_slot, done = asyncio.Event(), asyncio.Event()

        async def request() -> None:
            async with limiter.slot():
                got_slot.set()
                await done.wait()

        task = asyncio.create_task(request())
        await asyncio.sleep(0.7)  # connection refused, again and again: retried, not raised
        assert not task.done()
        assert not got_slot.is_set()
        server.start()
        await asyncio.wait_for(got_slot.wait(), 10)
        assert await limiter.in_flight() == 1

        # A restart loses every lease; the holder's renewal puts its own back.
        server.kill()
        await asyncio.sleep(0.3)
        server.start()
        deadline = time.monotonic() + 5
        while await limiter.in_flight() != 1:
            assert time.monotonic() < deadline, "the held lease was not restored"
            await asyncio.sleep(0.1)
        assert await limiter.peak() == 1

        done.set()
        await asyncio.wait_for(task, 10)
        assert await limiter.in_flight() == 0
        await limiter.aclose()

    try:
        asyncio.run(scenario())
    finally:
        server.kill()


@pytest.mark.timeout(30)
def test_a_fixed_cap_costs_one_round_trip_to_acquire_and_one_to_release(redis_url: str) -> None:
    sent = 0

    class Counting(aioredis.Connection):
        """A redis-py connection that counts what it sends: one count per round trip."""

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            nonlocal sent
            sent += 1
            await super().send_packed_command(command, check_health)

    async def scenario() -> int:
        client = aioredis.Redis.from_url(redis_url, connection_class=Counting)
        async with RedisLimiter(
            client, LimitConfig(concurrency=2, adaptive=False), _namespace()
        ) as limiter:
            async with limiter.slot():
                pass  # connects and loads the scripts
            before = sent
            for _ in range(20):
                async with limiter.slot():
                    pass
                await limiter.on_success()  # without adaptive mode, feedback is free
                await limiter.on_rate_limited()
            spent = sent - before
        await client.aclose()
        return spent

    assert asyncio.run(scenario()) == 2 * 20
