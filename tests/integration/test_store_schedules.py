"""Schedules in the job table (SQLite and PostgreSQL): a due time is claimed by exactly one of
many racing claimers, a stale claim of an older due time loses, and runs by hand leave the cron
times alone."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from pipeline.options import JobOptions, Publish
from pipeline.store.schedules import (
    Outcome,
    ScheduleExists,
    ScheduleNotFound,
    add_schedule,
    claim_run,
    finish_run,
    get_run,
    get_schedule,
    last_runs,
    list_schedules,
    remove_schedule,
    runs_of,
)

DUE = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)


def _add(db: Engine, name: str = "nightly") -> int:
    with db.begin() as conn:
        return add_schedule(conn, name, "/srv/jobs.yaml", "0 2 * * *").id


def test_racing_claimers_get_one_run(job_table: Engine) -> None:
    schedule_id = _add(job_table)
    claimers = 8
    start = threading.Barrier(claimers)
    won: list[int | None] = []
    lock = threading.Lock()

    def claim() -> None:
        start.wait()
        with job_table.begin() as conn:
            got = claim_run(conn, schedule_id, DUE, advance=True)
        with lock:
            won.append(got)

    threads = [threading.Thread(target=claim) for _ in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(won) == claimers
    assert len([w for w in won if w is not None]) == 1, won
    with job_table.begin() as conn:
        assert get_schedule(conn, "nightly").last_due_at == DUE
        [run] = runs_of(conn, schedule_id)
    assert run.due_at == DUE and run.outcome is Outcome.CLAIMED


def test_a_stale_claim_of_an_older_due_time_loses(job_table: Engine) -> None:
    schedule_id = _add(job_table)
    with job_table.begin() as conn:
        assert claim_run(conn, schedule_id, DUE, advance=True) is not None
    # A tick that read the schedule before that claim chose the slot before: it must not fire.
    with job_table.begin() as conn:
        assert claim_run(conn, schedule_id, DUE - timedelta(days=1), advance=True) is None
        assert claim_run(conn, schedule_id, DUE, advance=True) is None
        assert claim_run(conn, schedule_id, DUE + timedelta(days=1), advance=True) is not None
        assert [r.due_at for r in runs_of(conn, schedule_id)] == [DUE, DUE + timedelta(days=1)]


def test_a_run_by_hand_leaves_the_cron_times_alone(job_table: Engine) -> None:
    schedule_id = _add(job_table)
    by_hand = DUE + timedelta(minutes=5)
    with job_table.begin() as conn:
        first = claim_run(conn, schedule_id, by_hand, advance=False)
        assert first is not None
        assert claim_run(conn, schedule_id, by_hand, advance=False) is None
        assert get_schedule(conn, "nightly").last_due_at is None
        # The cron time before it still fires.
        assert claim_run(conn, schedule_id, DUE, advance=True) is not None


def test_an_outcome_is_recorded_once(job_table: Engine) -> None:
    schedule_id = _add(job_table)
    with job_table.begin() as conn:
        run_id = claim_run(conn, schedule_id, DUE, advance=True)
        assert run_id is not None
        assert finish_run(conn, run_id, Outcome.FAILED, error="x" * 5000)
        assert not finish_run(conn, run_id, Outcome.SUBMITTED, job_id="abc")
        run = get_run(conn, run_id)
        assert last_runs(conn) == {schedule_id: run}
    assert run.outcome is Outcome.FAILED and run.job_id is None
    assert run.error is not None and len(run.error) == 1000


def test_names_are_unique_and_removal_takes_the_runs(job_table: Engine) -> None:
    options = JobOptions(publish=Publish.MANUAL, keep_releases=9, schedule="ignored")
    with job_table.begin() as conn:
        added = add_schedule(
            conn, "nightly", "/srv/jobs.yaml", "0 2 * * *", output="/srv/out", options=options
        )
    # What a run submits: the schedule's options, not the manifest's keep_releases.
    assert added.options == JobOptions(publish=Publish.MANUAL)
    assert added.output == "/srv/out"
    with pytest.raises(ScheduleExists, match="exists"), job_table.begin() as conn:
        add_schedule(conn, "nightly", "/srv/other.yaml", "0 3 * * *")
    with job_table.begin() as conn:
        assert claim_run(conn, added.id, DUE, advance=True) is not None
        remove_schedule(conn, "nightly")
        assert list_schedules(conn) == []
        assert last_runs(conn) == {}
        # A tick still holding the removed schedule claims nothing.
        assert claim_run(conn, added.id, DUE + timedelta(days=1), advance=True) is None
    with (
        pytest.raises(ScheduleNotFound, match="no schedule named 'nightly'"),
        job_table.begin() as conn,
    ):
        remove_schedule(conn, "nightly")
