"""The sweeper (`workers.sweep`) on real db, a real Redis and a Dispatcher on the broker.

A dead worker is an executor whose heartbeat is older than the sweeper's executor timeout (its
row moved back in time, or gone); a live one is a real `Executor` beating its row. Time is
moved by moving the job table's timestamps back, never by a fake clock; sweep intervals and
stall windows are tenths of a second.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from sqlalchemy import Engine, select

from pipeline.settings import Settings
from pipeline.store import State, executors, open_database, transitions
from pipeline.store.schema import EXECUTORS, JOBS, SCRIPTS, SEGMENTS
from pipeline.store.transitions import Claim
from tests.fixtures.jobs import ME, executor_for, row_of, set_back
from tests.fixtures.services import PrivateRedis, poll_until
from tests.fixtures.worker_runtime import (
    Broker,
    assert_no_thread_left,
    finish,
    record_job,
    segments_by_script,
    stitch,
    synthesize,
    threads_of_ours,
    worker_variables,
)
from workers.app import create_app
from workers.dispatch import Dispatcher
from workers.sweep import KICK_PREFIX, LOCK_KEY, Sweeper, Swept

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

TIMEOUT = 60.0  # seconds: an executor silent for longer is dead, and its claims orphans
HOUR = 3600.0


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    """The test's job table, migrated."""
    factory = open_database(database_url)
    try:
        yield factory
    finally:
        factory.dispose()


def app_for(redis_url: str, database_url: str, broker_url: str | None = None) -> Celery:
    """A worker's Celery app, on the test's broker unless `broker_url` says otherwise."""
    variables = worker_variables(redis_url, database_url, "http://127.0.0.1:9/v1/rime-tts")
    if broker_url is not None:
        variables["CELERY_BROKER_URL"] = broker_url
    return create_app(Settings.from_environment(variables))


@pytest.fixture
def app(redis_url: str, database_url: str) -> Iterator[Celery]:
    celery = app_for(redis_url, database_url)
    try:
        yield celery
    finally:
        celery.close()


MakeSweeper = Callable[..., Sweeper]


@pytest.fixture
def make_sweeper(db: Engine, app: Celery, redis_url: str) -> Iterator[MakeSweeper]:
    """Sweepers on the test's job table, broker and Redis, each with a connection of its own
    (another worker's); all stopped at the end, their threads gone."""
    before = threads_of_ours()
    made: list[tuple[Sweeper, redis.Redis]] = []

    def make(
        *,
        executor_timeout: float = TIMEOUT,
        stall: float = HOUR,
        interval: float = 0.2,
        client: redis.Redis | None = None,
        dispatch: Dispatcher | None = None,
        on: Engine | None = None,
    ) -> Sweeper:
        connection = client or redis.Redis.from_url(redis_url)
        sweeper = Sweeper(
            on or db,
            # One segment per task by default: each message then names one segment, and what a
            # sweep sent counts them.
            dispatch or Dispatcher(app, per_task=1),
            connection,
            executor_timeout=executor_timeout,
            stall_seconds=stall,
            interval=interval,
        )
        made.append((sweeper, connection))
        return sweeper

    try:
        yield make
    finally:
        for sweeper, connection in made:
            sweeper.stop()
            connection.close()
    assert_no_thread_left(before)


def move_back(db: Engine, job_id: str, seconds: float) -> None:
    """Every timestamp of the job `seconds` earlier: as if it had all happened that long ago."""
    with db.begin() as conn:
        set_back(conn, JOBS, job_id, seconds, "started_at", "finished_at")
        for table in (SCRIPTS, SEGMENTS):
            stamps = [c for c in ("started_at", "stitch_started_at", "finished_at") if c in table.c]
            for pk in conn.scalars(select(table.c.id).where(table.c.job_id == job_id)):
                set_back(conn, table, pk, seconds, *stamps)


def claim_back(db: Engine, segment_pk: int, seconds: float, claim: Claim = ME) -> None:
    """Claim a segment as a worker did `seconds` ago (by default one whose executor is gone)."""
    with db.begin() as conn:
        assert transitions.claim_segment(conn, segment_pk, claim)
    with db.begin() as conn:
        set_back(conn, SEGMENTS, segment_pk, seconds, "started_at")


def silent_for(db: Engine, seconds: float) -> Claim:
    """A claim of a worker whose heartbeat stopped `seconds` ago (SIGKILLed, frozen)."""
    executor_id = f"silent-{int(seconds)}"
    with db.begin() as conn:
        executors.register(conn, executor_id, executors.WORKER)
        set_back(conn, EXECUTORS, executor_id, seconds, "started_at", "heartbeat_at")
    return Claim(f"{executor_id}.1", executor_id)


def finish_segments(db: Engine, segment_pks: list[int]) -> None:
    for segment_pk in segment_pks:
        with db.begin() as conn:
            assert transitions.claim_segment(conn, segment_pk, ME)
            assert transitions.finish_segment(conn, segment_pk, ME, audio_seconds=1.0)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def sweeper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rime-batch-sweeper"]


def test_a_dead_executors_segment_claim_is_requeued_and_the_jobs_work_sent(
    db: Engine, make_sweeper: MakeSweeper, broker: Broker, tmp_path: Path
) -> None:
    job_id = record_job(db, tmp_path / "job", scripts=2, lines=2)
    (a, b), (c, d) = segments_by_script(db, job_id)
    with executor_for(db, executors.WORKER) as live:
        # a's worker stopped beating two timeouts ago, just after claiming it; b's beats.
        claim_back(db, a.segment_pk, 0, silent_for(db, 2 * TIMEOUT))
        claim_back(db, b.segment_pk, 0, live.claim())

        swept = make_sweeper().sweep()

        # Three pending segments and the rollup; the job is not stalled (just claimed).
        assert swept == [Swept(job_id, 1, 0, False, 4)]
        row = row_of(db, SEGMENTS, a.segment_pk)
        assert row.state is State.PENDING and row.started_at is None
        assert (row.claim, row.executor) == (None, None)
        assert row.last_error == transitions.TAKEN_OVER
        assert row_of(db, SEGMENTS, b.segment_pk).state is State.RUNNING
        assert broker.synth() == [synthesize(ref.segment_pk) for ref in (a, c, d)]
        assert broker.stitches() == [finish(job_id)]


def test_a_jobs_segments_go_several_to_a_task_in_plan_order(
    db: Engine, app: Celery, broker: Broker, tmp_path: Path
) -> None:
    job_id = record_job(db, tmp_path / "job", scripts=4, lines=5)
    pks = [ref.segment_pk for refs in segments_by_script(db, job_id) for ref in refs]

    sent = Dispatcher(app, per_task=8).outstanding(db, job_id)

    assert broker.synth() == [synthesize(*pks[0:8]), synthesize(*pks[8:16]), synthesize(*pks[16:])]
    assert broker.stitches() == [finish(job_id)]
    assert sent == 4
    # The default is the setting's, carried by the app.
    assert Dispatcher(app).per_task == Settings().segments_per_task
    batched = create_app(Settings(RIME_BATCH_SEGMENTS_PER_TASK=5))
    assert Dispatcher(batched).per_task == 5
    with pytest.raises(ValueError, match="at least one segment"):
        Dispatcher(app, per_task=0)


def test_a_dead_executors_stitch_claim_is_requeued_and_the_jobs_work_sent(
    db: Engine, make_sweeper: MakeSweeper, broker: Broker, tmp_path: Path
) -> None:
    job_id = record_job(db, tmp_path / "job", scripts=2, lines=2)
    first, second = segments_by_script(db, job_id)
    script_pk = first[0].script_pk
    finish_segments(db, [ref.segment_pk for ref in first])
    # Its executor's row is gone: removed as dead, or the worker stopped without its claims.
    with db.begin() as conn:
        assert transitions.claim_stitch(conn, script_pk, ME)

    swept = make_sweeper().sweep()

    assert swept == [Swept(job_id, 0, 1, False, 4)]
    row = row_of(db, SCRIPTS, script_pk)
    assert row.state is State.PENDING and row.stitch_started_at is None
    assert (row.claim, row.executor) == (None, None)
    assert broker.synth() == [synthesize(ref.segment_pk) for ref in second]
    assert broker.stitches() == [stitch(script_pk), finish(job_id)]


def test_a_live_executors_claims_are_left_alone_however_old(
    db: Engine, make_sweeper: MakeSweeper, broker: Broker, tmp_path: Path
) -> None:
    job_id = record_job(db, tmp_path / "job", scripts=2, lines=2)
    first, second = segments_by_script(db, job_id)
    finish_segments(db, [ref.segment_pk for ref in first])
    with executor_for(db, executors.WORKER) as live:
        stitching, synthesizing = live.claim(), live.claim()
        with db.begin() as conn:
            assert transitions.claim_stitch(conn, first[0].script_pk, stitching)
            set_back(conn, SCRIPTS, first[0].script_pk, HOUR, "stitch_started_at")
        # Claimed an hour ago, a hundred times the executor timeout: a long request, not a
        # dead worker, for its executor still beats.
        claim_back(db, second[0].segment_pk, HOUR, synthesizing)
        # And one whose worker fell silent, but not for long enough to be dead.
        claim_back(db, second[1].segment_pk, 0, silent_for(db, TIMEOUT / 2))
        sweeper = make_sweeper()

        assert sweeper.sweep() == []
        assert sweeper.sweep_job(job_id) == Swept(job_id, 0, 0, False, 0)
        script = row_of(db, SCRIPTS, first[0].script_pk)
        assert script.state is State.RUNNING and script.claim == stitching.token
        segment = row_of(db, SEGMENTS, second[0].segment_pk)
        assert segment.state is State.RUNNING and segment.claim == synthesizing.token
        assert row_of(db, SEGMENTS, second[1].segment_pk).state is State.RUNNING
        assert broker.everything() == {"rime-batch": [], "rime-batch.stitch": []}


def test_a_claim_is_requeued_once_its_executor_has_been_silent_for_the_timeout(
    db: Engine, make_sweeper: MakeSweeper, broker: Broker, tmp_path: Path
) -> None:
    job_id = record_job(db, tmp_path / "job", scripts=1, lines=1)
    [[ref]] = segments_by_script(db, job_id)
    # Its worker beat for the last time just now, and then was SIGKILLed.
    claim_back(db, ref.segment_pk, 0, silent_for(db, 0))
    sweeper = make_sweeper(executor_timeout=2.0)
    assert sweeper.sweep_job(job_id) == Swept(job_id, 0, 0, False, 0)
    assert row_of(db, SEGMENTS, ref.segment_pk).state is State.RUNNING

    poll_until(lambda: sweeper.sweep_job(job_id).segments_requeued == 1, 10, "a requeue")

    assert row_of(db, SEGMENTS, ref.segment_pk).state is State.PENDING
    assert broker.synth() == [synthesize(ref.segment_pk)]
    assert broker.stitches() == [finish(job_id)]


def test_a_stalled_job_is_resent_once_per_stall_window(
    db: Engine,
    make_sweeper: MakeSweeper,
    broker: Broker,
    redis_url: str,
    tmp_path: Path,
) -> None:
    stalled = record_job(db, tmp_path / "stalled", scripts=2, lines=2)
    moving = record_job(db, tmp_path / "moving", scripts=1, lines=2)
    move_back(db, stalled, 60)  # started a minute ago, nothing claimed since
    move_back(db, moving, 60)
    [busy, _] = segments_by_script(db, moving)[0]
    live = executor_for(db, executors.WORKER)  # a worker is on it, beating
    mine = live.claim()
    with db.begin() as conn:
        assert transitions.claim_segment(conn, busy.segment_pk, mine)
    work = [synthesize(ref.segment_pk) for refs in segments_by_script(db, stalled) for ref in refs]
    # A window a loaded two-core machine cannot overrun between two sweeps (0.8 s could).
    sweeper = make_sweeper(stall=3.0)
    client = redis.Redis.from_url(redis_url)

    try:
        assert sweeper.sweep() == [Swept(stalled, 0, 0, True, 5)]
        assert broker.synth() == work
        assert broker.stitches() == [finish(stalled)]

        # Within the window: swept again, nothing sent again.
        assert sweeper.sweep() == []
        assert sweeper.sweep_job(stalled) == Swept(stalled, 0, 0, True, 0)
        ttl = client.pttl(f"{KICK_PREFIX}:{stalled}")
        assert 0 < ttl <= 3000
        assert broker.synth() == work

        # A dead executor's claim is requeued and resent at once, stall window or not.
        claim_back(db, work[0].args[0][0], 2 * TIMEOUT)
        assert sweeper.sweep() == [Swept(stalled, 1, 0, True, 5)]
        assert broker.synth() == work * 2

        # The window over, the stalled job is sent once more; the other job is still moving.
        time.sleep(ttl / 1000 + 0.05)
        with db.begin() as conn:
            assert transitions.finish_segment(conn, busy.segment_pk, mine, audio_seconds=1.0)
        assert sweeper.sweep() == [Swept(stalled, 0, 0, True, 5)]
        assert broker.synth() == work * 3
        assert broker.stitches() == [finish(stalled)] * 3
    finally:
        live.close()
        client.close()


def test_only_running_jobs_are_swept(
    db: Engine, make_sweeper: MakeSweeper, broker: Broker, tmp_path: Path
) -> None:
    cancelled = record_job(db, tmp_path / "cancelled", scripts=1, lines=2)
    [[claimed, _]] = segments_by_script(db, cancelled)
    claim_back(db, claimed.segment_pk, 2 * TIMEOUT)
    with db.begin() as conn:
        transitions.cancel_job(conn, cancelled)
    failed = record_job(db, tmp_path / "failed", scripts=1, lines=1)
    [[only]] = segments_by_script(db, failed)
    finish_segments(db, [only.segment_pk])
    with db.begin() as conn:
        assert transitions.claim_stitch(conn, only.script_pk, ME)
        assert transitions.fail_script(conn, only.script_pk, ME, "given up")
        assert transitions.settle_job(conn, failed) is State.FAILED
    for job_id in (cancelled, failed):
        move_back(db, job_id, HOUR)

    assert make_sweeper(stall=1).sweep() == []
    assert broker.everything() == {"rime-batch": [], "rime-batch.stitch": []}


def test_a_sweeper_waits_while_it_is_another_workers_turn(
    db: Engine,
    make_sweeper: MakeSweeper,
    broker: Broker,
    redis_url: str,
    tmp_path: Path,
) -> None:
    job_id = record_job(db, tmp_path / "job", scripts=1, lines=1)
    move_back(db, job_id, 60)
    client = redis.Redis.from_url(redis_url)
    try:
        # Another worker's turn, for the next two seconds.
        client.set(LOCK_KEY, "another-worker", px=2000)
        sweeper = make_sweeper(stall=0.05, interval=0.2)
        sweeper.start()
        time.sleep(0.7)  # three intervals
        assert broker.everything() == {"rime-batch": [], "rime-batch.stitch": []}

        client.delete(LOCK_KEY)  # that worker's turn is over: this one's comes at its next try
        wait_for(lambda: finish(job_id) in broker.stitches(), 1.0, "a sweep")
    finally:
        client.close()


def test_a_sweeper_sweeps_at_once_when_it_starts(
    db: Engine, make_sweeper: MakeSweeper, broker: Broker, tmp_path: Path
) -> None:
    job_id = record_job(db, tmp_path / "job", scripts=1, lines=1)
    [[ref]] = segments_by_script(db, job_id)
    move_back(db, job_id, 60)
    # A job whose workers all died: the first worker back sweeps it, not an interval later.
    sweeper = make_sweeper(stall=30, interval=30)
    started = time.monotonic()
    sweeper.start()

    wait_for(lambda: finish(job_id) in broker.stitches(), 2.0, "the first sweep")

    assert time.monotonic() - started < 2.0
    assert broker.synth() == [synthesize(ref.segment_pk)]


def test_two_sweepers_on_one_redis_take_turns(
    db: Engine,
    make_sweeper: MakeSweeper,
    broker: Broker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    interval = 0.4
    job_id = record_job(db, tmp_path / "job", scripts=1, lines=1)
    move_back(db, job_id, 60)
    # A stall window shorter than anything: every sweep of this job resends it.
    sweepers = [make_sweeper(stall=0.001, interval=interval) for _ in range(2)]

    with caplog.at_level(logging.WARNING, logger="workers.sweep"):
        for sweeper in sweepers:
            sweeper.start()
        time.sleep(2.0)
        for sweeper in sweepers:
            sweeper.stop()

    sweeps = [r for r in caplog.records if r.getMessage().startswith(f"resent job={job_id}")]
    # Each sweep sent the job's one segment and its rollup.
    assert broker.stitches() == [finish(job_id)] * len(sweeps)
    assert len(broker.synth()) == len(sweeps)
    # Alone, each would have swept about five times; together they share those turns.
    assert 3 <= len(sweeps) <= 6
    # A turn lasts nine tenths of the interval: no two sweeps run together. (Without the
    # lock, the second sweeper would sweep within milliseconds of the first, every time.)
    times = sorted(r.created for r in sweeps)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) > 0.5 * interval, gaps


def test_redis_errors_during_a_sweep_are_logged_and_skipped(
    db: Engine,
    make_sweeper: MakeSweeper,
    broker: Broker,
    stoppable_redis: PrivateRedis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = record_job(db, tmp_path / "job", scripts=1, lines=1)
    move_back(db, job_id, 60)
    # The sweeper's Redis (its turns and kicks) is not running yet; the broker is.
    client = redis.Redis.from_url(stoppable_redis.url)
    sweeper = make_sweeper(stall=5, interval=0.2, client=client)

    with caplog.at_level(logging.WARNING, logger="workers.sweep"):
        sweeper.start()
        wait_for(lambda: "sweep skipped: ConnectionError" in caplog.text, 5, "a skipped sweep")
        time.sleep(0.5)
        assert broker.everything() == {"rime-batch": [], "rime-batch.stitch": []}
        assert len(sweeper_threads()) == 1

        stoppable_redis.start()
        wait_for(lambda: finish(job_id) in broker.stitches(), 5, "a sweep once Redis is back")

    assert len(broker.synth()) == 1
    assert f"resent job={job_id}" in caplog.text


def test_database_errors_during_a_sweep_are_logged_and_skipped(
    db: Engine,
    make_sweeper: MakeSweeper,
    broker: Broker,
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = record_job(db, tmp_path / "job", scripts=1, lines=1)
    move_back(db, job_id, 60)
    engine = sa.create_engine(database_url)
    sweeper = make_sweeper(stall=0.001, interval=0.2)
    try:
        with engine.begin() as conn:  # the job table is away (a migration gone wrong, say)
            conn.execute(sa.text("ALTER TABLE jobs RENAME TO jobs_away"))
        with caplog.at_level(logging.WARNING, logger="workers.sweep"):
            sweeper.start()
            wait_for(lambda: "sweep skipped:" in caplog.text, 5, "a skipped sweep")
            time.sleep(0.5)
            assert broker.everything() == {"rime-batch": [], "rime-batch.stitch": []}
            assert len(sweeper_threads()) == 1

            with engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE jobs_away RENAME TO jobs"))
            wait_for(lambda: finish(job_id) in broker.stitches(), 5, "a sweep once it is back")
    finally:
        engine.dispose()

    skipped = [r.getMessage() for r in caplog.records if "sweep skipped" in r.getMessage()]
    assert skipped and all(
        m in {"sweep skipped: OperationalError", "sweep skipped: ProgrammingError"} for m in skipped
    )


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_broker_outage_during_a_sweep_is_logged_and_skipped(
    db: Engine,
    make_sweeper: MakeSweeper,
    stoppable_redis: PrivateRedis,
    redis_url: str,
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = record_job(db, tmp_path / "job", scripts=1, lines=1)
    move_back(db, job_id, 60)
    # The broker is down; the sweeper's own Redis is up. A publish retries for about a minute
    # by default; one quick retry here, to get to the same error in a test's time.
    app = app_for(redis_url, database_url, broker_url=stoppable_redis.url)
    app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0}
    try:
        sweeper = make_sweeper(stall=0.3, interval=0.2, dispatch=Dispatcher(app))
        with caplog.at_level(logging.WARNING, logger="workers.sweep"):
            sweeper.start()
            time.sleep(0.6)
            assert len(sweeper_threads()) == 1, "the sweeper thread died"
            assert "sweep skipped: OperationalError" in caplog.text

            stoppable_redis.start()
            back = Broker(stoppable_redis.url)
            try:
                wait_for(lambda: finish(job_id) in back.stitches(), 5, "a sweep once it is back")
            finally:
                back.close()
    finally:
        app.close()
