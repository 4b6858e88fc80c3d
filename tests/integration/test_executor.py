"""An executor (`pipeline.executor`) on the real job table, SQLite and PostgreSQL: its row, its
heartbeat thread, the claims it watches, and who wins a claim when executors race for it.

Executors here beat every tenth of a second (tests/fixtures/jobs.py). Waits poll the job table
or the calls they expect; nothing is timed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, delete, select

from pipeline.executor import Executor
from pipeline.store import State, executors, open_database, transitions
from pipeline.store.schema import EXECUTORS, utcnow
from pipeline.store.transitions import Claim
from tests.fixtures.jobs import (
    TEST_EXECUTOR_TIMEOUT,
    TEST_HEARTBEAT,
    Job,
    executor_for,
    plan_of,
    record,
    row_of,
    script_row,
    segment_row,
    set_back,
    texts_of,
)
from tests.fixtures.services import poll_until
from tests.fixtures.worker_runtime import assert_no_thread_left, threads_of_ours
from tests.integration.test_store import one_tx, race

pytestmark = [pytest.mark.postgres]

# Time enough for many heartbeats however loaded the machine is.
PATIENCE = 10.0


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    """The job table, with room for racing threads and every executor's heartbeat."""
    engine = open_database(database_url, pool_size=16, max_overflow=16)
    try:
        yield engine
    finally:
        engine.dispose()


def new_job(db: Engine, folder: Path, segments: int = 1) -> Job:
    """A pending job of one script, recorded and started as `submit` does."""
    job = record(db, plan_of(str(folder), texts_of(1, segments, tag=folder.name)))
    with db.begin() as conn:
        transitions.start_job(conn, job.job_id)
    return job


def executor_row(db: Engine, executor: Executor) -> object | None:
    """The executor's row, or None when it has none."""
    with db.begin() as conn:
        found = conn.execute(select(EXECUTORS).where(EXECUTORS.c.id == executor.id)).one_or_none()
    return found


def heartbeat_of(db: Engine, executor: Executor) -> object:
    return row_of(db, EXECUTORS, executor.id).heartbeat_at


def beats(db: Engine, executor: Executor, count: int) -> None:
    """Wait until the executor has beaten its row `count` more times."""
    for _ in range(count):
        last = heartbeat_of(db, executor)
        poll_until(lambda last=last: heartbeat_of(db, executor) != last, PATIENCE, "a heartbeat")


@dataclass
class Calls:
    """What `on_lost` saw: how many times it was called, and on which thread."""

    threads: list[str] = field(default_factory=list)

    def __call__(self) -> None:
        self.threads.append(threading.current_thread().name)


def claim(db: Engine, segment_pk: int, executor: Executor) -> Claim:
    """Claim a segment for `executor`, as its stage would."""
    mine = executor.claim()
    with db.begin() as conn:
        assert transitions.claim_segment(conn, segment_pk, mine)
    return mine


# Its row and its heartbeat


@pytest.mark.parametrize(("heartbeat", "timeout"), [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0)])
def test_the_heartbeat_must_be_positive_and_shorter_than_the_timeout(
    db: Engine, heartbeat: float, timeout: float
) -> None:
    with pytest.raises(ValueError, match="shorter than the timeout"):
        Executor(db, executors.WORKER, heartbeat_seconds=heartbeat, timeout_seconds=timeout)
    with db.begin() as conn:
        assert conn.execute(select(EXECUTORS)).all() == []


def test_an_executor_registers_its_row_and_beats_it(db: Engine) -> None:
    executor = executor_for(db, executors.WORKER)

    row = row_of(db, EXECUTORS, executor.id)
    assert (row.kind, row.host, row.pid) == (executors.WORKER, socket.gethostname(), os.getpid())
    assert row.heartbeat_at == row.started_at
    beats(db, executor, 3)
    later = row_of(db, EXECUTORS, executor.id)
    assert later.started_at == row.started_at and later.heartbeat_at > row.heartbeat_at
    # Beating, it is alive to everyone who asks.
    with db.begin() as conn:
        alive = conn.scalar(select(executors.alive(EXECUTORS.c.id, executor.dead_before())))
    assert alive is True
    # Its claims are its own, each a token of their own.
    first, second = executor.claim(), executor.claim()
    assert first.executor == second.executor == executor.id and first.token != second.token


def test_close_removes_the_row_stops_the_thread_and_leaves_its_claims_to_take_over(
    db: Engine, tmp_path: Path
) -> None:
    before = threads_of_ours()
    job = new_job(db, tmp_path / "job")
    [segment_pk] = job.all_segments
    executor = Executor(
        db, executors.WORKER, heartbeat_seconds=TEST_HEARTBEAT, timeout_seconds=PATIENCE
    )
    assert "rime-batch-heartbeat" in {t.name for t in threads_of_ours() - before}
    claim(db, segment_pk, executor)

    executor.close()
    executor.close()  # a second close does nothing

    assert executor_row(db, executor) is None
    assert_no_thread_left(before)
    # Gone, its claim is dead at once, not a timeout later.
    other = executor_for(db, executors.WORKER)
    with db.begin() as conn:
        assert transitions.take_over_segment(
            conn, segment_pk, other.claim(), dead_before=other.dead_before()
        )


def test_a_removed_row_is_put_back_at_the_next_beat_and_its_claims_stay_alive(
    db: Engine, tmp_path: Path
) -> None:
    job = new_job(db, tmp_path / "job")
    [segment_pk] = job.all_segments
    executor = executor_for(db, executors.WORKER)
    mine = claim(db, segment_pk, executor)
    # Someone presumed it dead and removed it (an operator, a clean-up of old rows).
    with db.begin() as conn:
        conn.execute(delete(EXECUTORS).where(EXECUTORS.c.id == executor.id))

    poll_until(lambda: executor_row(db, executor) is not None, PATIENCE, "the row put back")

    row = row_of(db, EXECUTORS, executor.id)
    assert (row.kind, row.pid) == (executors.WORKER, os.getpid())
    beats(db, executor, 2)
    other = executor_for(db, executors.WORKER)
    with db.begin() as conn:
        assert not transitions.take_over_segment(
            conn, segment_pk, other.claim(), dead_before=other.dead_before()
        )
    assert segment_row(db, segment_pk).claim == mine.token


# Watched claims


def test_a_claim_lost_to_a_cancel_is_reported_once_from_the_heartbeat(
    db: Engine, tmp_path: Path
) -> None:
    job = new_job(db, tmp_path / "job", segments=2)
    lost_pk, kept_pk = job.all_segments
    executor = executor_for(db, executors.WORKER)
    lost, kept = claim(db, lost_pk, executor), claim(db, kept_pk, executor)
    on_lost, on_kept = Calls(), Calls()

    with executor.watching(lost, on_lost), executor.watching(kept, on_kept):
        beats(db, executor, 2)
        assert on_lost.threads == [] and on_kept.threads == []
        with db.begin() as conn:
            transitions.cancel_job(conn, job.job_id)

        poll_until(lambda: on_lost.threads, PATIENCE, "on_lost")
        # Some beats later it has still been called once, from the heartbeat thread.
        beats(db, executor, 3)
        assert on_lost.threads == ["rime-batch-heartbeat"]
    # Both were cancelled; each claim is reported once, however many beats see it lost.
    assert on_kept.threads == ["rime-batch-heartbeat"]


@pytest.mark.parametrize("work", ["segment", "stitch"])
def test_a_claim_lost_to_a_takeover_is_reported_and_the_taker_is_not(
    db: Engine, tmp_path: Path, work: str
) -> None:
    job = new_job(db, tmp_path / "job")
    [segment_pk] = job.all_segments
    [script_pk] = job.scripts
    ours, theirs = executor_for(db, executors.WORKER), executor_for(db, executors.WORKER)
    mine, taken = ours.claim(), theirs.claim()
    # A cutoff after our last beat: what another executor sees once ours has been silent for
    # the timeout (frozen, its host cut off), though here it goes on beating.
    later = utcnow() + timedelta(seconds=PATIENCE)
    with db.begin() as conn:
        if work == "segment":
            assert transitions.claim_segment(conn, segment_pk, mine)
        else:
            ref = Claim("done.1", "done")
            assert transitions.claim_segment(conn, segment_pk, ref)
            assert transitions.finish_segment(conn, segment_pk, ref, audio_seconds=1.0)
            assert transitions.claim_stitch(conn, script_pk, mine)
    on_ours, on_theirs = Calls(), Calls()

    with ours.watching(mine, on_ours):
        beats(db, ours, 2)
        assert on_ours.threads == []
        with db.begin() as conn:
            if work == "segment":
                assert transitions.take_over_segment(conn, segment_pk, taken, dead_before=later)
            else:
                assert transitions.take_over_stitch(conn, script_pk, taken, dead_before=later)
        with theirs.watching(taken, on_theirs):
            poll_until(lambda: on_ours.threads, PATIENCE, "on_lost")
            beats(db, theirs, 3)

    assert on_ours.threads == ["rime-batch-heartbeat"]
    assert on_theirs.threads == []
    row = segment_row(db, segment_pk) if work == "segment" else script_row(db, script_pk)
    assert (row.state, row.claim, row.executor) == (State.RUNNING, taken.token, theirs.id)


def test_a_claim_still_held_is_never_reported_and_an_unwatched_one_is_not_either(
    db: Engine, tmp_path: Path
) -> None:
    job = new_job(db, tmp_path / "job", segments=2)
    held_pk, dropped_pk = job.all_segments
    executor = executor_for(db, executors.WORKER)
    held, dropped = claim(db, held_pk, executor), claim(db, dropped_pk, executor)
    calls = Calls()

    with executor.watching(held, calls):
        beats(db, executor, 5)
        assert executor.beat() == set()
    # No longer watched (the stage is past it), its loss is nobody's business.
    with executor.watching(dropped, calls):
        pass
    with db.begin() as conn:
        transitions.cancel_job(conn, job.job_id)
    assert executor.beat() == set()
    beats(db, executor, 3)

    assert calls.threads == []


def test_beat_returns_the_lost_claims_and_calls_each_on_lost(db: Engine, tmp_path: Path) -> None:
    job = new_job(db, tmp_path / "job", segments=2)
    first_pk, second_pk = job.all_segments
    # A heartbeat an hour apart: only our own beats run here.
    executor = Executor(db, executors.WORKER, heartbeat_seconds=3600, timeout_seconds=7200)
    try:
        first, second = claim(db, first_pk, executor), claim(db, second_pk, executor)
        calls = Calls()
        with executor.watching(first, calls), executor.watching(second, calls):
            assert executor.beat() == set()
            with db.begin() as conn:
                transitions.cancel_job(conn, job.job_id)
            assert executor.beat() == {first.token, second.token}
            assert executor.beat() == set()
        assert calls.threads == [threading.current_thread().name] * 2
    finally:
        executor.close()


# Who wins a claim


# How a racer claims: a fresh claim, a takeover, or both in turn as the stages do.
WAYS = ("claim", "take_over", "stage")
# Whom the row belongs to when the race starts.
HOLDERS = ("nobody", "a dead executor", "a live executor")


def racer(
    way: str, segment_pk: int, executor: Executor, mine: Claim, delay: float
) -> Callable[[Connection], bool]:
    """One executor's attempt at the segment, `delay` seconds after the start."""

    def attempt(conn: Connection) -> bool:
        time.sleep(delay)
        cutoff = executor.dead_before()
        if way == "claim":
            return transitions.claim_segment(conn, segment_pk, mine)
        if way == "take_over":
            return transitions.take_over_segment(conn, segment_pk, mine, dead_before=cutoff)
        return transitions.claim_segment(conn, segment_pk, mine) or (
            transitions.take_over_segment(conn, segment_pk, mine, dead_before=cutoff)
        )

    return attempt


@pytest.fixture
def contenders(db: Engine) -> list[Executor]:
    """Four live executors to race, and a fifth to hold rows."""
    return [executor_for(db, executors.WORKER) for _ in range(5)]


@pytest.fixture
def dead(db: Engine) -> Claim:
    """A claim of an executor that was SIGKILLed: its row left, its heartbeat old."""
    with db.begin() as conn:
        executors.register(conn, "killed", executors.WORKER)
        set_back(conn, EXECUTORS, "killed", 10 * TEST_EXECUTOR_TIMEOUT, "heartbeat_at")
    return Claim("killed.1", "killed")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    holder=st.sampled_from(HOLDERS),
    ways=st.lists(st.sampled_from(WAYS), min_size=2, max_size=4),
    delays=st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.005]), min_size=4, max_size=4),
)
def test_executors_racing_for_one_segment_have_at_most_one_winner(
    db: Engine,
    tmp_path: Path,
    contenders: list[Executor],
    dead: Claim,
    holder: str,
    ways: list[str],
    delays: list[float],
) -> None:
    job = new_job(db, tmp_path / f"job-{time.monotonic_ns()}")
    [segment_pk] = job.all_segments
    *racing, keeper = contenders
    held = {"a dead executor": dead, "a live executor": keeper.claim()}.get(holder)
    if held is not None:
        with db.begin() as conn:
            assert transitions.claim_segment(conn, segment_pk, held)
    claims = [racing[i].claim() for i in range(len(ways))]

    won = race(
        db,
        [
            one_tx(racer(way, segment_pk, racing[i], claims[i], delays[i]))
            for i, way in enumerate(ways)
        ],
    )

    # Who can win at all: a pending row goes to a claim, a dead executor's to a takeover, and
    # a live executor's to nobody. Then exactly one of those who can, wins.
    can = {"nobody": {"claim", "stage"}, "a dead executor": {"take_over", "stage"}}
    expected = 1 if set(ways) & can.get(holder, set()) else 0
    assert won.count(True) == expected, (holder, ways, won)
    row = segment_row(db, segment_pk)
    if expected:
        winner = claims[won.index(True)]
        assert (row.state, row.claim, row.executor) == (
            State.RUNNING,
            winner.token,
            winner.executor,
        )
    elif held is None:
        assert (row.state, row.claim) == (State.PENDING, None)
    else:
        assert (row.state, row.claim, row.executor) == (State.RUNNING, held.token, held.executor)


ROUNDS = 20


def test_of_executors_taking_over_one_dead_claim_exactly_one_wins(
    db: Engine, tmp_path: Path, contenders: list[Executor], dead: Claim
) -> None:
    racing = contenders[:4]
    for round_ in range(ROUNDS):
        job = new_job(db, tmp_path / f"job-{round_}")
        [segment_pk] = job.all_segments
        with db.begin() as conn:
            assert transitions.claim_segment(conn, segment_pk, dead)
        claims = [executor.claim() for executor in racing]

        won = race(
            db,
            [
                one_tx(racer("take_over", segment_pk, e, c, 0.0))
                for e, c in zip(racing, claims, strict=True)
            ],
        )

        # (PostgreSQL rechecks a row a concurrent taker changed against the row alone: a
        # takeover conditioned only on the holder's heartbeat let every taker through.)
        assert won.count(True) == 1, (round_, won)
        assert segment_row(db, segment_pk).claim == claims[won.index(True)].token


def test_a_sweep_racing_a_takeover_never_requeues_the_takers_claim(
    db: Engine, tmp_path: Path, contenders: list[Executor], dead: Claim
) -> None:
    taker = contenders[0]
    for round_ in range(ROUNDS):
        job = new_job(db, tmp_path / f"job-{round_}")
        [segment_pk] = job.all_segments
        with db.begin() as conn:
            assert transitions.claim_segment(conn, segment_pk, dead)
        mine = taker.claim()

        def sweep(conn: Connection, job_id: str = job.job_id) -> bool:
            requeued = transitions.requeue_orphans(
                conn, dead_before=taker.dead_before(), job_id=job_id
            )
            return requeued == (1, 0)

        took, requeued = race(
            db, [one_tx(racer("take_over", segment_pk, taker, mine, 0.0)), one_tx(sweep)]
        )

        # One or the other, never both: a requeued takeover is synthesized (and billed) twice.
        assert took != requeued, (round_, took, requeued)
        row = segment_row(db, segment_pk)
        if took:
            assert (row.state, row.claim) == (State.RUNNING, mine.token)
        else:
            assert (row.state, row.claim) == (State.PENDING, None)
