"""Celery workers under a shared cap and against a faulty engine."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from rime_local.server import RunningEngine
from tests.fixtures.celery_workers import (
    CeleryEnv,
    WorkerPool,
    celery_env,
    celery_workers,
    check_outputs,
    make_plan,
    wait_for_job,
)
from workers.commands import submit

# The fixtures, imported by name so pytest finds them in this module.
__all__ = ["celery_env", "celery_workers"]

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

EngineFactory = Callable[..., RunningEngine]


def test_three_workers_never_exceed_the_global_cap(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: EngineFactory,
    tmp_path: Path,
) -> None:
    # The engine itself has no limit, so its peak shows what the workers really sent.
    engine = engine_factory(ttfb_ms=250)
    # A fixed cap (adaptation, the default, would start at half of it).
    env = celery_env.with_changes(
        rime_api_url=engine.http_url, RIME_BATCH_CONCURRENCY=3, RIME_BATCH_ADAPTIVE=0
    )
    celery_workers.start(env, count=3, threads=3)
    plan = make_plan(tmp_path / "job", scripts=3, lines=5)

    job_id = submit(plan, app=env.app(), database_url=env.database_url)
    summary = wait_for_job(env, job_id, celery_workers, timeout=60)

    check_outputs(summary, plan)
    metrics = engine.metrics()
    # Nine threads wanted to send at once; the shared cap held them to three, and kept three
    # busy.
    assert metrics["peak_in_flight"] == 3
    assert metrics["rejected_429"] == 0
    assert metrics["completed"] == 15


def test_a_faulty_engine_costs_retries_not_the_job(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: EngineFactory,
    tmp_path: Path,
) -> None:
    engine = engine_factory(ttfb_ms=20, fault_error_rate=0.12, fault_cut_rate=0.12, fault_seed=12)
    env = celery_env.with_changes(rime_api_url=engine.http_url, RIME_BATCH_CONCURRENCY=4)
    celery_workers.start(env, count=2, threads=3)
    plan = make_plan(tmp_path / "job", scripts=3, lines=4)

    job_id = submit(plan, app=env.app(), database_url=env.database_url)
    summary = wait_for_job(env, job_id, celery_workers, timeout=60)

    check_outputs(summary, plan)
    metrics = engine.metrics()
    faults = metrics["faults"]
    assert faults.get("cut", 0) > 0
    assert faults.get("http_500", 0) + faults.get("http_503", 0) > 0
    assert sum(s.attempts for s in summary.scripts) == 12 + metrics["faults_total"]
    # Cut streams were billed although their audio was thrown away; 5xx answers were not: the
    # job table holds what the engine saw begin to stream, to the character.
    billed = sum(s.billed_chars for s in summary.scripts)
    assert billed == metrics["billed_characters"] > metrics["characters"] == plan.chars
    # Every fault is one line naming its segment and attempt; none is a traceback.
    logs = celery_workers.logs()
    assert "Traceback" not in logs, logs[-5000:]
    retries = [line for line in logs.splitlines() if " retry job=" in line]
    assert len(retries) == metrics["faults_total"], logs[-5000:]
    where = re.compile(rf"job={job_id} script=script-\d segment=[0-3] attempt=\d+/12 error=\S")
    assert all(where.search(line) for line in retries), retries
