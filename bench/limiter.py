"""The shared limiter's CPU per slot, against the Redis round trips it cannot do without.

Every Celery request holds a slot of `pipeline.limits.RedisLimiter`: with a fixed cap that is
one round trip to acquire and one to release (the admission and release scripts), plus
whatever the limiter spends around them (tasks, shields, the lease's renewal, retries). Both
are measured in one run, against one private redis-server:

    bare      the same two scripts, EVALSHA'd by redis-py's asyncio client, per slot
    limiter   `async with limiter.slot()` then `on_success()`, fixed cap and adaptive

    ratio     limiter CPU per slot / bare CPU per slot (this process only, not Redis's)

N slots at a time are taken by `--width` concurrent tasks, as a worker's loop does.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from throughput_celery import start_redis  # bench/ is on sys.path when run as a script

from pipeline.limits import LimitConfig, lua
from pipeline.limits.shared import RedisKeys, RedisLimiter


def cpu_seconds() -> float:
    """User and system CPU of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def per_slot(one: Callable[[], Awaitable[None]], count: int, width: int) -> float:
    """CPU milliseconds per call of `one`, `width` at a time, after a warm-up."""
    gate = asyncio.Semaphore(width)

    async def gated() -> None:
        async with gate:
            await one()

    await asyncio.gather(*(gated() for _ in range(width * 4)))
    start = cpu_seconds()
    await asyncio.gather(*(gated() for _ in range(count)))
    return 1000 * (cpu_seconds() - start) / count


async def bare(url: str, count: int, width: int) -> float:
    """The admission and release scripts alone, with the limiter's own keys and arguments."""
    client = aioredis.Redis.from_url(url)
    keys = RedisKeys.for_namespace(f"bench-bare-{time.time_ns()}")
    acquire, release = client.register_script(lua.ACQUIRE), client.register_script(lua.RELEASE)
    lease_ms, cap = 30_000, width

    async def one() -> None:
        token = f"t{time.monotonic_ns()}"
        admitted, _, _ = await acquire(
            keys=[keys.leases, keys.adaptive, keys.peak],
            args=[token, lease_ms, cap, 0, cap, 3_600_000],
        )
        assert int(admitted), "width is the cap: every slot is admitted at once"
        await release(keys=[keys.leases, keys.wake], args=[token, cap, lease_ms])

    try:
        return await per_slot(one, count, width)
    finally:
        await client.aclose()


async def limited(url: str, count: int, width: int, adaptive: bool) -> float:
    """A slot of the shared limiter and its success report."""
    config = LimitConfig(concurrency=width, adaptive=adaptive)
    async with RedisLimiter(url, config, namespace=f"bench-{time.time_ns()}") as limiter:

        async def one() -> None:
            async with limiter.slot():
                pass
            await limiter.on_success()

        return await per_slot(one, count, width)


def main() -> None:
    """Print each figure and its ratio to the bare round trips."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=3000)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rime-limiter-") as tmp:
        server, url = start_redis(Path(tmp))
        try:
            base = asyncio.run(bare(url, args.slots, args.width))
            print(f"bare      {base:6.3f} ms CPU per slot (two EVALSHA round trips)")
            for adaptive in (False, True):
                figure = asyncio.run(limited(url, args.slots, args.width, adaptive))
                name = "adaptive" if adaptive else "fixed cap"
                ratio = figure / base
                print(f"limiter   {figure:6.3f} ms CPU per slot  ratio {ratio:5.2f}  {name}")
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
