"""Celery workers end to end: real worker processes, Redis, PostgreSQL and the local engine."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.rime.errors import MAX_MESSAGE_CHARS
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
    summary_of,
    wait_for_job,
    wait_until,
)
from tests.fixtures.leaks import assert_no_piece_of, database_text, folder_bytes
from workers.commands import cancel, submit

# The fixtures, imported by name so pytest finds them in this module.
__all__ = ["celery_env", "celery_workers"]

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

EngineFactory = Callable[..., RunningEngine]


def test_pipeline_does_not_import_celery() -> None:
    code = "import sys, pipeline.run, pipeline.stages, pipeline.cli; print('celery' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


KEY = "rk-c7e1a9-4f1d9c2b7a"


def places_a_key_could_leak(
    env: CeleryEnv, workers: WorkerPool, destination: Path
) -> dict[str, str]:
    """The workers' logs, every row of the job table and every file of the destination."""
    return {
        "worker logs": workers.logs(),
        "database": database_text(env.database_url),
        "destination": folder_bytes(destination).decode("latin-1"),
    }


# Three segments a task: four tasks, more than one worker's three threads can hold.
@pytest.mark.parametrize("per_task", [1, 3])
def test_two_workers_render_a_job_with_correct_audio(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: EngineFactory,
    tmp_path: Path,
    per_task: int,
) -> None:
    engine = engine_factory(ttfb_ms=50, api_keys=[KEY])
    env = celery_env.with_changes(
        rime_api_url=engine.http_url,
        RIME_API_KEY=KEY,
        RIME_BATCH_CONCURRENCY=4,
        RIME_BATCH_SEGMENTS_PER_TASK=per_task,
    )
    first, second = celery_workers.start(env, count=2, threads=3)
    plan = make_plan(tmp_path / "job", scripts=3, lines=4)

    job_id = submit(plan, app=env.app(), database_url=env.database_url)
    summary = wait_for_job(env, job_id, celery_workers, timeout=60)

    check_outputs(summary, plan)
    # Every segment was requested exactly once, and both workers took a share.
    assert engine.metrics()["completed"] == 12
    assert sum(s.attempts for s in summary.scripts) == 12
    for worker in (first, second):
        assert "segment synthesized" in worker.log(), worker.log()[-3000:]
    # The key went to the engine only: not to a log line, the job table or an output.
    assert_no_piece_of(KEY, places_a_key_could_leak(env, celery_workers, Path(plan.destination)))


def test_a_refused_key_fails_the_job_and_a_resubmit_with_the_right_one_finishes_it(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: EngineFactory,
    tmp_path: Path,
) -> None:
    # The refusal echoes the key across the cut of the server's message.
    engine = engine_factory(api_keys=[KEY], echo_refused_key_at=MAX_MESSAGE_CHARS - 10)
    wrong = "rk-w0f3b2-0a9b8c7d6e"
    env = celery_env.with_changes(rime_api_url=engine.http_url, RIME_API_KEY=wrong)
    [worker] = celery_workers.start(env, count=1, threads=2)
    plan = make_plan(tmp_path / "job", scripts=3, lines=4)

    job_id = submit(plan, app=env.app(), database_url=env.database_url)
    summary = wait_for_job(env, job_id, celery_workers, timeout=30)

    assert summary.job.state is State.FAILED
    assert all(s.state is State.FAILED for s in summary.scripts)
    # Each of the two threads learnt it once; nothing queued behind them was sent.
    assert 1 <= engine.metrics()["rejected_401"] <= 2
    assert segments_in(env, job_id, [State.DONE]) == 0
    places = places_a_key_could_leak(env, celery_workers, Path(plan.destination))
    assert_no_piece_of(wrong, places)
    assert_no_piece_of(KEY, places)

    worker.stop()
    right = env.with_changes(RIME_API_KEY=KEY)
    celery_workers.start(right, count=1, threads=2)
    assert submit(job_id[:6], app=right.app(), database_url=right.database_url) == job_id
    check_outputs(wait_for_job(env, job_id, celery_workers, timeout=30), plan)


def test_a_cancelled_job_stops_and_records_nothing_more(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: EngineFactory,
    tmp_path: Path,
) -> None:
    engine = engine_factory(ttfb_ms=300)
    env = celery_env.with_changes(rime_api_url=engine.http_url, RIME_BATCH_CONCURRENCY=1)
    celery_workers.start(env, count=1, threads=2)
    plan = make_plan(tmp_path / "job", scripts=2, lines=6)

    job_id = submit(plan, app=env.app(), database_url=env.database_url)
    wait_until(
        lambda: segments_in(env, job_id, [State.DONE]) >= 2, 30, "two segments", celery_workers
    )
    cancelled = cancel(job_id, database_url=env.database_url)

    assert 0 < cancelled < 12
    done_at_cancel = segments_in(env, job_id, [State.DONE])
    # What the worker's two threads had claimed at the cancel still runs (a request may
    # already be on its way); everything queued behind it skips.
    time.sleep(2.0)
    summary = summary_of(env, job_id)
    assert summary.job.state is State.CANCELLED
    assert segments_in(env, job_id, [State.DONE]) == done_at_cancel
    assert segments_in(env, job_id, [State.CANCELLED]) == 12 - done_at_cancel
    assert all(s.state is State.CANCELLED for s in summary.scripts)
    assert all(not s.output_uris for s in summary.scripts)
    requests = engine.metrics()["requests"]
    assert requests <= done_at_cancel + 2
    time.sleep(1.0)
    assert engine.metrics()["requests"] == requests


def test_a_cancel_under_load_stops_every_workers_requests_and_the_job_can_be_sent_again(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: EngineFactory,
    tmp_path: Path,
) -> None:
    # Every request streams for seconds: both workers have several in flight at the cancel.
    engine = engine_factory(ttfb_ms=100, pacing=0.25)
    env = celery_env.with_changes(
        rime_api_url=engine.http_url, RIME_BATCH_CONCURRENCY=4, RIME_BATCH_ADAPTIVE=0
    )
    celery_workers.start(env, count=2, threads=4)
    plan = make_plan(tmp_path / "job", scripts=4, lines=4)
    job_id = submit(plan, app=env.app(), database_url=env.database_url)
    wait_until(lambda: engine.metrics()["in_flight"] >= 3, 60, "requests in flight", celery_workers)

    cancel(job_id, database_url=env.database_url)

    # Stopped by each worker's next heartbeat, not streamed to the end.
    wait_until(
        lambda: engine.metrics()["in_flight"] == 0, 5, "requests in flight stopped", celery_workers
    )
    # Counted once those stopped: a segment claimed just before the cancel committed can
    # reach the engine just after it (its claim came first; the heartbeat stops it).
    sent_by_then = engine.metrics()["requests"]
    # The queued tasks are delivered and skip: nothing is sent after the cancel (a negative,
    # so it can only be watched for a while).
    time.sleep(2.0)
    assert engine.metrics()["requests"] == sent_by_then
    summary = summary_of(env, job_id)
    assert summary.job.state is State.CANCELLED
    assert sum(s.billed_chars for s in summary.scripts) == engine.metrics()["billed_characters"]

    # A cancelled job can be sent again; it finishes without redoing what was done.
    engine.configure(ttfb_ms=0, pacing=0.0)
    assert submit(job_id, app=env.app(), database_url=env.database_url) == job_id
    wait_until(
        lambda: summary_of(env, job_id).job.state is State.DONE, 60, "the job done", celery_workers
    )
