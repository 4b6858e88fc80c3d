"""Webhooks on the Celery side: the rollup that ends a job sends its `deliver` tasks, the sweeper
sends them for every attempt that comes due, and a real worker process makes the deliveries
(a retry included) to a real receiver on loopback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, update

from pipeline.options import JobOptions
from pipeline.settings import Settings
from pipeline.store import State, deliveries, open_database
from pipeline.store.deliveries import DeliveryState, DeliveryStatus
from pipeline.store.schema import DELIVERIES, utcnow
from rime_local.server import RunningEngine
from tests.fixtures.celery_workers import (
    CeleryEnv,
    WorkerPool,
    celery_env,
    celery_workers,
    make_plan,
    wait_for_job,
    wait_until,
)
from tests.fixtures.leaks import assert_no_piece_of, database_text
from tests.fixtures.webhooks import Receiver, signed_by
from tests.fixtures.worker_runtime import (
    Broker,
    Runtimes,
    deliver,
    finish,
    record_job,
    segments_by_script,
    worker_variables,
)
from workers import flow
from workers.app import create_app
from workers.commands import submit
from workers.dispatch import Dispatcher
from workers.sweep import DELIVER_PREFIX, Sweeper

__all__ = ["celery_env", "celery_workers"]

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

SECRET = "whsec-wrk-2e4f6a8c0b1d3f5a"


def rows(db: Engine, job_id: str) -> list[DeliveryStatus]:
    with db.begin() as conn:
        return deliveries.for_job(conn, job_id)


def test_the_rollup_that_ends_a_job_sends_a_deliver_task_per_webhook(
    runtimes: Runtimes, broker: Broker, receiver: Receiver, tmp_path: Path
) -> None:
    rt = runtimes(RIME_BATCH_WEBHOOK_SECRET=SECRET)
    job_id = record_job(
        rt.db, tmp_path / "job", scripts=1, lines=1, notify=[receiver.url("/a"), receiver.url("/b")]
    )
    [[segment]] = segments_by_script(rt.db, job_id)
    flow.synthesize(rt, segment.segment_pk)
    assert broker.stitches() == [finish(job_id)]
    broker.clear()

    assert flow.finish(rt, job_id) is State.DONE

    first, second = rows(rt.db, job_id)
    assert broker.stitches() == [deliver(first.delivery_id), deliver(second.delivery_id)]
    assert receiver.received == []  # sent by the tasks, not by the rollup

    assert flow.deliver(rt, first.delivery_id) == "delivered"
    assert flow.deliver(rt, second.delivery_id) == "delivered"
    # A redelivered task, or a duplicate from the sweeper, sends nothing more.
    assert flow.deliver(rt, first.delivery_id) == "skipped"
    assert sorted(r.path for r in receiver.received) == ["/a", "/b"]
    assert all(signed_by(SECRET, r) for r in receiver.received)
    # A redelivered rollup of the finished job tells nobody again.
    broker.clear()
    assert flow.finish(rt, job_id) is State.DONE
    assert broker.stitches() == []
    assert len(rows(rt.db, job_id)) == 2


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    factory = open_database(database_url)
    try:
        yield factory
    finally:
        factory.dispose()


@pytest.fixture
def app(redis_url: str, database_url: str) -> Iterator[Celery]:
    variables = worker_variables(redis_url, database_url, "http://127.0.0.1:9/v1/rime-tts")
    celery = create_app(Settings.from_environment(variables))
    try:
        yield celery
    finally:
        celery.close()


def test_the_sweeper_sends_one_deliver_task_per_attempt_that_comes_due(
    db: Engine, app: Celery, broker: Broker, redis_url: str, tmp_path: Path
) -> None:
    job_id = record_job(db, tmp_path / "job", scripts=1, lines=1, notify=["https://a.example/"])
    now = utcnow()
    with db.begin() as conn:
        [pk] = deliveries.add(conn, job_id, ["https://a.example/"], "job.done", '{"id":"e"}', now)
        [later] = deliveries.add(
            conn, job_id, ["https://b.example/"], "job.done", '{"id":"e"}', now
        )
        # Not due for an hour: left alone.
        conn.execute(
            update(DELIVERIES)
            .where(DELIVERIES.c.id == later)
            .values(next_attempt_at=now + timedelta(hours=1))
        )
    client = redis.Redis.from_url(redis_url)
    sweeper = Sweeper(
        db, Dispatcher(app), client, executor_timeout=60, stall_seconds=3600, interval=0.2
    )
    try:
        assert sweeper.sweep_deliveries() == 1
        assert broker.stitches() == [deliver(pk)]
        # The task is on its way: the next sweeps do not send it again.
        assert sweeper.sweep_deliveries() == 0
        assert 0 < client.pttl(f"{DELIVER_PREFIX}:{pk}:0") <= 60_000

        # An attempt failed and its retry came due: a task for that attempt.
        with db.begin() as conn:
            claimed = deliveries.claim(conn, pk, utcnow(), utcnow())
            assert claimed is not None
            assert deliveries.mark_retry(
                conn, claimed, status=500, error="HTTP 500", next_attempt_at=utcnow()
            )
        assert sweeper.sweep_deliveries() == 1
        assert broker.stitches() == [deliver(pk)] * 2

        # Delivered or failed rows are over.
        with db.begin() as conn:
            assert deliveries.mark_delivered(conn, pk, 200, utcnow())
        assert sweeper.sweep_deliveries() == 0
    finally:
        client.close()


@pytest.mark.slow
def test_a_worker_delivers_the_webhook_and_its_sweeper_retries_a_failed_one(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: Callable[..., RunningEngine],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    engine = engine_factory()
    env = celery_env.with_changes(
        rime_api_url=engine.http_url,
        RIME_BATCH_WEBHOOK_SECRET=SECRET,
        RIME_BATCH_WEBHOOK_INITIAL_WAIT="0.2",
        RIME_BATCH_WEBHOOK_JITTER="0",
    )
    celery_workers.start(env, count=1, threads=2)
    receiver.answer(503)
    plan = make_plan(tmp_path / "job", scripts=2, lines=1)
    plan = replace(plan, options=JobOptions(notify=(receiver.url(),)))

    job_id = submit(plan, app=env.app(), database_url=env.database_url)
    summary = wait_for_job(env, job_id, celery_workers, timeout=60)
    assert summary.job.state is State.DONE

    wait_until(lambda: len(receiver.received) >= 2, 30, "the retried webhook", celery_workers)
    time.sleep(1.5)  # a sweep or two more: nothing else may arrive
    assert [r.status for r in receiver.received] == [503, 200]
    assert all(signed_by(SECRET, r) for r in receiver.received)
    assert len({r.event_id for r in receiver.received}) == 1
    assert receiver.received[1].document["job_id"] == job_id
    db = open_database(env.database_url)
    try:
        [row] = rows(db, job_id)
    finally:
        db.dispose()
    assert (row.state, row.attempts, row.last_status) == (DeliveryState.DELIVERED, 2, 200)
    logs = celery_workers.logs()
    assert "webhook not delivered" in logs and "webhook delivered" in logs
    assert_no_piece_of(SECRET, {"worker logs": logs, "database": database_text(env.database_url)})
