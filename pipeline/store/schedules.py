"""Schedules and their runs in the job table.

A run is one due time of a schedule, handled once. `claim_run` is what makes it once: in one
savepoint it moves the schedule's `last_due_at` forward to the due time (a compare-and-set: a
tick that read the schedule before another tick handled a newer due time loses) and inserts the
run, whose (schedule, due time) is unique. Only the caller that claimed a run submits its job;
a second beat, a restarted one, or two workers running the same tick get None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from pipeline.errors import InputError
from pipeline.options import JobOptions
from pipeline.store.errors import StoreError
from pipeline.store.schema import SCHEDULE_RUNS, SCHEDULES, utcnow

# The longest error kept on a run: one line, as the command line shows it.
MAX_ERROR_CHARS = 1000


class ScheduleNotFound(StoreError, InputError):
    """No schedule has the name the user gave."""


class ScheduleExists(StoreError, InputError):
    """A schedule of that name exists already."""


class Outcome(StrEnum):
    """What became of one due time of a schedule."""

    CLAIMED = "claimed"  # being submitted now (or its process stopped before it could say)
    SUBMITTED = "submitted"  # a job was recorded and sent; `job_id` names it
    UNCHANGED = "unchanged"  # only-if-changed, and the manifest would render nothing new
    FAILED = "failed"  # the job could not be submitted; `error` says why in one line


@dataclass(frozen=True)
class Schedule:
    """A manifest rendered on a cron schedule."""

    id: int
    name: str
    manifest: str  # absolute path, read again at every run
    cron: str
    only_if_changed: bool
    created_at: datetime
    last_due_at: datetime | None  # the newest due time handled
    output: str | None = None  # overrides the manifest's destination
    # Submitted with every run (overrides, publish mode, webhooks), as `JobOptions`.
    options: JobOptions = field(default_factory=JobOptions)

    @property
    def since(self) -> datetime:
        """After what time the next due time lies: the last one handled, or the creation."""
        return self.last_due_at or self.created_at


@dataclass(frozen=True)
class Run:
    """One handled due time of a schedule."""

    id: int
    schedule_id: int
    due_at: datetime
    created_at: datetime
    outcome: Outcome
    job_id: str | None
    error: str | None


def _options_json(output: str | None, options: JobOptions) -> dict[str, Any]:
    stored = options.to_json()
    # A run's own: the manifest says how many releases to keep, the run names its schedule.
    stored.pop("keep_releases", None)
    stored.pop("schedule", None)
    return {**stored, "output": output}


def _schedule(row: Any) -> Schedule:
    data = dict(row.options or {})
    return Schedule(
        id=row.id,
        name=row.name,
        manifest=row.manifest,
        cron=row.cron,
        only_if_changed=bool(row.only_if_changed),
        created_at=row.created_at,
        last_due_at=row.last_due_at,
        output=data.pop("output", None),
        options=JobOptions.from_json(data),
    )


def add_schedule(
    conn: Connection,
    name: str,
    manifest: str,
    cron: str,
    *,
    only_if_changed: bool = False,
    output: str | None = None,
    options: JobOptions | None = None,
) -> Schedule:
    """Record a new schedule; ScheduleExists when the name is taken."""
    try:
        # A savepoint: on PostgreSQL a refused statement would abort the whole transaction.
        with conn.begin_nested():
            conn.execute(
                insert(SCHEDULES).values(
                    name=name,
                    manifest=manifest,
                    cron=cron,
                    options=_options_json(output, options or JobOptions()),
                    only_if_changed=only_if_changed,
                    created_at=utcnow(),
                )
            )
    except IntegrityError:
        raise ScheduleExists(
            f"a schedule named {name!r} exists; `rime-batch schedule remove {name}` first"
        ) from None
    return get_schedule(conn, name)


def replace_schedule(
    conn: Connection,
    name: str,
    manifest: str,
    cron: str,
    *,
    only_if_changed: bool = False,
    output: str | None = None,
    options: JobOptions | None = None,
) -> Schedule:
    """Change what a schedule renders and when; its runs, and the due times it has handled,
    stay (so a changed cron does not fire for a slot already handled). ScheduleNotFound when
    there is none."""
    schedule = get_schedule(conn, name)
    conn.execute(
        update(SCHEDULES)
        .where(SCHEDULES.c.id == schedule.id)
        .values(
            manifest=manifest,
            cron=cron,
            options=_options_json(output, options or JobOptions()),
            only_if_changed=only_if_changed,
        )
    )
    return get_schedule(conn, name)


def get_schedule(conn: Connection, name: str) -> Schedule:
    """The schedule called `name`; ScheduleNotFound when there is none."""
    row = conn.execute(select(SCHEDULES).where(SCHEDULES.c.name == name)).one_or_none()
    if row is None:
        raise ScheduleNotFound(f"no schedule named {name!r}; `rime-batch schedule list` shows them")
    return _schedule(row)


def list_schedules(conn: Connection) -> list[Schedule]:
    """Every schedule, by name."""
    rows = conn.execute(select(SCHEDULES).order_by(SCHEDULES.c.name)).all()
    return [_schedule(row) for row in rows]


def remove_schedule(conn: Connection, name: str) -> None:
    """Delete a schedule and its runs (its jobs stay); ScheduleNotFound when there is none."""
    schedule = get_schedule(conn, name)
    conn.execute(delete(SCHEDULE_RUNS).where(SCHEDULE_RUNS.c.schedule_id == schedule.id))
    conn.execute(delete(SCHEDULES).where(SCHEDULES.c.id == schedule.id))


class _Handled(Exception):
    """A newer (or the same) due time of the schedule was handled first."""


def claim_run(conn: Connection, schedule_id: int, due_at: datetime, *, advance: bool) -> int | None:
    """Claim one due time of a schedule: the new run's id, or None when another caller has it.

    `advance` (every cron due time) moves `last_due_at` forward to `due_at`, and fails when it
    is there already; a run asked for by hand (`schedule run`) leaves the cron times alone.
    """
    try:
        with conn.begin_nested():
            if advance:
                # Also the row lock (PostgreSQL) that makes concurrent claimers take turns: the
                # second one sees the first one's last_due_at once it has committed.
                moved = conn.execute(
                    update(SCHEDULES)
                    .where(
                        SCHEDULES.c.id == schedule_id,
                        or_(SCHEDULES.c.last_due_at.is_(None), SCHEDULES.c.last_due_at < due_at),
                    )
                    .values(last_due_at=due_at)
                ).rowcount
                if moved != 1:
                    raise _Handled
            run_id: int = conn.execute(
                insert(SCHEDULE_RUNS)
                .values(
                    schedule_id=schedule_id,
                    due_at=due_at,
                    created_at=utcnow(),
                    outcome=Outcome.CLAIMED.value,
                )
                .returning(SCHEDULE_RUNS.c.id)
            ).scalar_one()
    except (_Handled, IntegrityError):
        # IntegrityError: the same due time claimed first, or the schedule removed meanwhile.
        return None
    return run_id


def finish_run(
    conn: Connection,
    run_id: int,
    outcome: Outcome,
    *,
    job_id: str | None = None,
    error: str | None = None,
) -> bool:
    """Record what became of a claimed run; False when it was recorded already."""
    assert outcome is not Outcome.CLAIMED, "a run is claimed by claim_run"
    done = conn.execute(
        update(SCHEDULE_RUNS)
        .where(SCHEDULE_RUNS.c.id == run_id, SCHEDULE_RUNS.c.outcome == Outcome.CLAIMED.value)
        .values(
            outcome=outcome.value,
            job_id=job_id,
            error=None if error is None else error[:MAX_ERROR_CHARS],
        )
    ).rowcount
    return bool(done == 1)


def _run(row: Any) -> Run:
    return Run(
        id=row.id,
        schedule_id=row.schedule_id,
        due_at=row.due_at,
        created_at=row.created_at,
        outcome=Outcome(row.outcome),
        job_id=row.job_id,
        error=row.error,
    )


def get_run(conn: Connection, run_id: int) -> Run:
    """One run by id."""
    return _run(conn.execute(select(SCHEDULE_RUNS).where(SCHEDULE_RUNS.c.id == run_id)).one())


def runs_of(conn: Connection, schedule_id: int) -> list[Run]:
    """Every run of a schedule, oldest due time first."""
    rows = conn.execute(
        select(SCHEDULE_RUNS)
        .where(SCHEDULE_RUNS.c.schedule_id == schedule_id)
        .order_by(SCHEDULE_RUNS.c.due_at, SCHEDULE_RUNS.c.id)
    ).all()
    return [_run(row) for row in rows]


def last_runs(conn: Connection) -> dict[int, Run]:
    """The most recent run of every schedule that has one, by schedule id."""
    newest = (
        select(func.max(SCHEDULE_RUNS.c.id).label("id"))
        .group_by(SCHEDULE_RUNS.c.schedule_id)
        .subquery()
    )
    rows = conn.execute(select(SCHEDULE_RUNS).join(newest, newest.c.id == SCHEDULE_RUNS.c.id))
    return {row.schedule_id: _run(row) for row in rows}
