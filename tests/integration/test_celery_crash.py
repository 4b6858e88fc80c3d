"""Celery workers that die, and a broker that restarts: the job still finishes, correctly."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.store.states import State
from rime_local.server import RunningEngine
from tests.fixtures.celery_workers import (
    CeleryEnv,
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


def test_killed_workers_work_is_taken_over_and_no_segment_is_stitched_twice(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: EngineFactory,
    tmp_path: Path,
) -> None:
    engine = engine_factory(ttfb_ms=300)
    env = celery_env.with_changes(rime_api_url=engine.http_url, RIME_BATCH_CONCURRENCY=2)
    first, second = celery_workers.start(env, count=2, threads=2)
    plan = make_plan(tmp_path / "job", scripts=3, lines=4)
    job_id = submit(plan, app=env.app(), database_url=env.database_url)

    def done() -> int:
        return segments_in(env, job_id, [State.DONE])

    wait_until(lambda: done() >= 3, 30, "three segments", celery_workers)
    first.kill()  # SIGKILL: its claims stay running, its messages unacknowledged
    wait_until(lambda: done() >= 6, 30, "three more segments", celery_workers)
    second.kill()  # now no worker is left at all
    time.sleep(1.0)
    assert segments_in(env, job_id, [State.DONE]) < 12

    celery_workers.start(env, count=1, threads=2)
    summary = wait_for_job(env, job_id, celery_workers, timeout=60)

    check_outputs(summary, plan)
    logs = celery_workers.logs()
    assert "took over segment" in logs or "stale_segments=" in logs, logs[-5000:]
    # Work the dead workers had in flight may have been requested twice; no more than that.
    assert 12 <= engine.metrics()["completed"] <= 12 + 4


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
    assert "took over" not in celery_workers.logs()
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
