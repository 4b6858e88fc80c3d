"""Celery workers that die, and a broker that restarts: the job still finishes, correctly."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pipeline.plan import JobPlan
from pipeline.store import create_engine_for
from pipeline.store.schema import EXECUTORS, SEGMENTS
from pipeline.store.states import State
from pipeline.store.transitions import TAKEN_OVER
from rime_local.server import RunningEngine
from tests.fixtures.celery_workers import (
    CeleryEnv,
    Worker,
    WorkerPool,
    celery_env,
    celery_workers,
    check_outputs,
    make_plan,
    segments_in,
    wait_for_job,
    wait_until,
)
from tests.fixtures.services import PrivateRedis
from workers.commands import submit

# The fixtures, imported by name so pytest finds them in this module.
__all__ = ["celery_env", "celery_workers"]

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

EngineFactory = Callable[..., RunningEngine]


# Segments of the job whose worker is killed: one per task thread of that worker, so it holds
# every one of them when it dies and the queue is empty.
LINES = 3
# The engine answers that worker after a minute: it dies with every request in flight.
IN_FLIGHT_MS = 60_000


@dataclass(frozen=True)
class Killed:
    """A job whose only worker was SIGKILLed mid-synthesis, with an idle worker beside it."""

    env: CeleryEnv
    job_id: str
    plan: JobPlan
    survivor: Worker
    killed_at: float  # time.monotonic() of the SIGKILL


def kill_mid_synthesis(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine: RunningEngine,
    tmp_path: Path,
    **timings: object,
) -> Killed:
    """One worker claims every segment of a job and is SIGKILLed with its requests in flight;
    a second worker, started meanwhile, has nothing to do. The engine is fast again for it."""
    env = celery_env.with_changes(
        rime_api_url=engine.http_url, RIME_BATCH_CONCURRENCY=2 * LINES, **timings
    )
    [doomed] = celery_workers.start(env, count=1, threads=LINES)
    plan = make_plan(tmp_path / "job", scripts=1, lines=LINES)
    job_id = submit(plan, app=env.app(), database_url=env.database_url)
    wait_until(
        lambda: len(claims_of(env, job_id)) == LINES, 30, "every segment claimed", celery_workers
    )
    assert doomed.process is not None
    assert set(claims_of(env, job_id).values()) == {executor_of(env, doomed.process.pid)}
    [survivor] = celery_workers.start(env, count=1, threads=2)

    doomed.kill()  # SIGKILL: its claims stay running, its messages unacknowledged
    killed_at = time.monotonic()
    engine.configure(ttfb_ms=0)
    return Killed(env, job_id, plan, survivor, killed_at)


def claims_of(env: CeleryEnv, job_id: str) -> dict[int, str]:
    """The job's running segments and the executor holding each."""
    engine = create_engine_for(env.database_url)
    try:
        with engine.begin() as conn:
            rows = conn.execute(
                select(SEGMENTS.c.id, SEGMENTS.c.executor).where(
                    SEGMENTS.c.job_id == job_id, SEGMENTS.c.state == State.RUNNING
                )
            ).all()
    finally:
        engine.dispose()
    return {row.id: row.executor for row in rows}


def executor_of(env: CeleryEnv, pid: int) -> str:
    """The executor id of the worker process `pid`."""
    engine = create_engine_for(env.database_url)
    try:
        with engine.begin() as conn:
            found = conn.scalar(select(EXECUTORS.c.id).where(EXECUTORS.c.pid == pid))
    finally:
        engine.dispose()
    assert found is not None, f"no executor row for pid {pid}"
    return str(found)


def segments_of(env: CeleryEnv, job_id: str) -> list[Any]:
    """The job's segment rows."""
    engine = create_engine_for(env.database_url)
    try:
        with engine.begin() as conn:
            return list(conn.execute(select(SEGMENTS).where(SEGMENTS.c.job_id == job_id)).all())
    finally:
        engine.dispose()


def taken_over_in(killed: Killed, pool: WorkerPool, how: str) -> float:
    """Wait for every segment to be done, by the survivor; the seconds since the SIGKILL."""
    wait_until(
        lambda: segments_in(killed.env, killed.job_id, [State.DONE]) == LINES,
        90,
        "the killed worker's segments",
        pool,
    )
    seconds = time.monotonic() - killed.killed_at
    print(f"\ntakeover of a SIGKILLed worker's segments ({how}): {seconds:.1f} s")
    return seconds


def check_billed_once(killed: Killed, engine: RunningEngine) -> None:
    """The dead worker's requests never reached their first byte, so nothing was billed for
    them: each segment was requested, billed and counted once, by the survivor."""
    assert killed.survivor.process is not None
    survivor = executor_of(killed.env, killed.survivor.process.pid)
    rows = segments_of(killed.env, killed.job_id)
    for row in rows:
        assert row.state == State.DONE and row.executor == survivor, row
        assert (row.attempts, row.billed_chars) == (1, row.chars), row
        assert row.last_error == TAKEN_OVER, row
    metrics = engine.metrics()
    assert metrics["completed"] == LINES
    assert metrics["characters"] == sum(row.chars for row in rows) == killed.plan.chars


def test_a_killed_workers_segments_are_taken_over_by_the_redelivered_tasks(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: EngineFactory,
    tmp_path: Path,
) -> None:
    engine = engine_factory(ttfb_ms=IN_FLIGHT_MS)
    # No sweeper to help: each worker sweeps once as it starts, and the first one's turn then
    # lasts most of an hour. The broker hands the messages out again 20 s after it gave them
    # to the killed worker, by when its executor has been silent for the timeout.
    killed = kill_mid_synthesis(
        celery_env,
        celery_workers,
        engine,
        tmp_path,
        RIME_BATCH_SWEEP_SECONDS=3600,
        RIME_BATCH_VISIBILITY_TIMEOUT=20,
    )

    taken_over_in(killed, celery_workers, "the broker's redelivery")

    summary = wait_for_job(killed.env, killed.job_id, celery_workers, timeout=60)
    check_outputs(summary, killed.plan)
    check_billed_once(killed, engine)
    # The stage took each one over: the sweeper never put anything back.
    assert "resent job=" not in celery_workers.logs()


def test_a_killed_workers_segments_are_taken_over_by_an_idle_workers_sweeper(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: EngineFactory,
    tmp_path: Path,
) -> None:
    engine = engine_factory(ttfb_ms=IN_FLIGHT_MS)
    # The broker would wait an hour; a quiet job is not resent before then either. Only the
    # sweeper, finding the killed worker silent for the executor timeout, brings its work back.
    killed = kill_mid_synthesis(
        celery_env,
        celery_workers,
        engine,
        tmp_path,
        RIME_BATCH_VISIBILITY_TIMEOUT=3600,
        RIME_BATCH_STALL_SECONDS=3600,
    )

    taken_over_in(killed, celery_workers, "the idle worker's sweeper")

    summary = wait_for_job(killed.env, killed.job_id, celery_workers, timeout=60)
    check_outputs(summary, killed.plan)
    check_billed_once(killed, engine)
    requeued = re.findall(
        rf"resent job={killed.job_id} stale_segments=(\d+)", killed.survivor.log()
    )
    assert sum(int(n) for n in requeued) == LINES, killed.survivor.log()[-5000:]


def test_a_warm_shutdown_finishes_what_it_started_and_leaves_the_rest_queued(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: EngineFactory,
    tmp_path: Path,
) -> None:
    engine = engine_factory(ttfb_ms=300)
    env = celery_env.with_changes(rime_api_url=engine.http_url, RIME_BATCH_CONCURRENCY=2)
    [worker] = celery_workers.start(env, count=1, threads=2, via_command=True)
    plan = make_plan(tmp_path / "job", scripts=2, lines=4)
    job_id = submit(plan, app=env.app(), database_url=env.database_url)
    wait_until(
        lambda: segments_in(env, job_id, [State.DONE]) >= 2, 30, "two segments", celery_workers
    )

    worker.kill(signal.SIGTERM)
    assert worker.process is not None
    assert worker.process.wait(timeout=20) == 0, worker.log()[-3000:]

    # Whatever it had claimed it finished; nothing is left running for someone to take over.
    assert segments_in(env, job_id, [State.RUNNING]) == 0
    assert segments_in(env, job_id, [State.PENDING]) > 0
    celery_workers.start(env, count=1, threads=2)
    summary = wait_for_job(env, job_id, celery_workers, timeout=60)
    check_outputs(summary, plan)
    assert all(row.last_error != TAKEN_OVER for row in segments_of(env, job_id))
    assert engine.metrics()["completed"] == 8


def test_a_broker_restart_that_loses_every_message_mid_job(
    private_redis: PrivateRedis,
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: EngineFactory,
    tmp_path: Path,
) -> None:
    # (private_redis comes first so that it is stopped last, after the workers.)
    engine = engine_factory(ttfb_ms=300)
    env = celery_env.with_changes(rime_api_url=engine.http_url, RIME_BATCH_CONCURRENCY=2)
    env = CeleryEnv(
        broker_url=private_redis.url,
        redis_url=private_redis.url,
        database_url=env.database_url,
        rime_api_url=env.rime_api_url,
        extra=env.extra,
    )
    celery_workers.start(env, count=2, threads=2)
    plan = make_plan(tmp_path / "job", scripts=3, lines=4)
    job_id = submit(plan, app=env.app(), database_url=env.database_url)

    wait_until(
        lambda: segments_in(env, job_id, [State.DONE]) >= 3, 30, "three segments", celery_workers
    )
    private_redis.kill()
    time.sleep(1.0)
    private_redis.start()

    summary = wait_for_job(env, job_id, celery_workers, timeout=90)
    check_outputs(summary, plan)
    assert all(w.alive for w in celery_workers.workers)
    # A lost broker, lost leases and a Redis outage are waited out: one line each, no traceback.
    logs = celery_workers.logs()
    assert "Traceback" not in logs, logs[-5000:]
    assert "Connection to broker lost" in logs
    assert "CPendingDeprecationWarning" not in logs, logs[-5000:]
