"""The scheduler's tick: every schedule whose due time has come fires, each due time once.

One `tick` serves both ways of running schedules: the Celery beat's `tick` task (on a worker,
submitting to the workers) and `rime-batch schedule serve` (in one process, rendering each job
here). What differs is only the `Submitter` they pass. For each schedule the tick claims the
due time in the job table (`pipeline.store.schedules.claim_run`; a second beat or a restarted
one gets nothing), reads the manifest again, asks `diff` when the schedule is only-if-changed,
and submits. Whatever stops a submission (the manifest gone or invalid, the production busy, a
service down) is recorded on the run as one line, and the next due time fires all the same.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from pipeline.diff import diff_at_destination
from pipeline.errors import RimeBatchError, first_line
from pipeline.options import JobOptions
from pipeline.plan import JobPlan, plan_manifest
from pipeline.schedules import check_cron, check_name, due_to_handle
from pipeline.settings import get_settings
from pipeline.store.schedules import (
    Outcome,
    Schedule,
    add_schedule,
    claim_run,
    finish_run,
    get_schedule,
    list_schedules,
    replace_schedule,
)
from pipeline.store.schema import utcnow

log = logging.getLogger(__name__)

# Told the job's id as soon as it is recorded (a render here may then run for an hour).
Recorded = Callable[[str], None]
# Submits a plan as a new job and calls `recorded(job_id)` once the job is recorded.
Submit = Callable[[JobPlan, Recorded], None]


@dataclass(frozen=True)
class Submitter:
    """Where a tick's jobs go: the Celery workers, or a render in this process."""

    submit: Submit
    # Where its renders find cached segments ("" for Rime's audio): only-if-changed asks there.
    cache_namespace: str = ""


def add(
    db: Engine,
    name: str,
    manifest: Path | str,
    cron: str,
    *,
    only_if_changed: bool = False,
    output: str | None = None,
    options: JobOptions | None = None,
    check: Callable[[JobPlan], None] | None = None,
    replace: bool = False,
) -> Schedule:
    """Check and record a schedule of a manifest (a path, or an s3:// URI as a str); the
    manifest is planned once now, so one that cannot be rendered is refused with its own
    message (and `check` sees the plan). It records where the manifest is, to read it again.
    With `replace`, schedule `name` exists and is changed to this (its runs stay)."""
    # Here, not at the top: a tick's process never adds, and need not load the sender.
    from pipeline.deliver import require_secret

    check_name(name)
    expression = check_cron(cron)
    plan = plan_manifest(manifest, output=output, options=options)
    require_secret(plan.options.notify, get_settings().webhook_secret)
    if check is not None:
        check(plan)
    with db.begin() as conn:
        return (replace_schedule if replace else add_schedule)(
            conn,
            name,
            plan.manifest,  # the absolute path, or the URI
            expression,
            only_if_changed=only_if_changed,
            # Resolved now: relative to where this runs, not where a worker does.
            output=plan.destination if output is not None else None,
            options=plan.options,
        )


@dataclass(frozen=True)
class Fired:
    """What one due time of a schedule came to."""

    schedule: str
    due_at: datetime
    outcome: Outcome
    job_id: str | None = None
    error: str | None = None


def tick(db: Engine, submitter: Submitter, *, now: datetime | None = None) -> list[Fired]:
    """Fire every schedule with a due time at or before `now` (default: the clock) not handled
    yet: the newest such time only, however many were missed."""
    now = now or utcnow()
    with db.begin() as conn:
        schedules = list_schedules(conn)
    fired = []
    for schedule in schedules:
        due = due_to_handle(schedule.cron, schedule.since, now)
        if due is None:
            continue
        with db.begin() as conn:
            run_id = claim_run(conn, schedule.id, due, advance=True)
        if run_id is not None:
            fired.append(fire(db, schedule, run_id, due, submitter))
    return fired


def run_now(db: Engine, name: str, submitter: Submitter) -> Fired:
    """Fire one schedule now, by hand: a run due now, which leaves its cron times alone."""
    due = utcnow()
    with db.begin() as conn:
        schedule = get_schedule(conn, name)
        run_id = claim_run(conn, schedule.id, due, advance=False)
    if run_id is None:
        raise RimeBatchError(f"schedule {name!r} was removed meanwhile")
    return fire(db, schedule, run_id, due, submitter)


def plan_run(schedule: Schedule) -> JobPlan:
    """The plan of one run: the manifest as it reads now, with the schedule's options (its
    overrides applied as `render` applies them; the job names the schedule)."""
    plan = plan_manifest(schedule.manifest, output=schedule.output, options=schedule.options)
    return replace(plan, options=replace(plan.options, schedule=schedule.name))


def would_change(db: Engine, plan: JobPlan, cache_namespace: str) -> bool:
    """Whether rendering `plan` would send anything to Rime or change its published release."""
    return diff_at_destination(db, plan, cache_namespace, get_settings()).anything


def fire(
    db: Engine, schedule: Schedule, run_id: int, due_at: datetime, submitter: Submitter
) -> Fired:
    """Submit the claimed run `run_id` of `schedule` and record what became of it."""
    jobs: list[str] = []

    def recorded(job_id: str) -> None:
        jobs.append(job_id)
        with db.begin() as conn:
            finish_run(conn, run_id, Outcome.SUBMITTED, job_id=job_id)

    def record(outcome: Outcome, error: str | None = None) -> Fired:
        with db.begin() as conn:
            finish_run(conn, run_id, outcome, error=error)
        return Fired(schedule.name, due_at, outcome, error=error)

    try:
        plan = plan_run(schedule)
        if schedule.only_if_changed and not would_change(db, plan, submitter.cache_namespace):
            fired = record(Outcome.UNCHANGED)
        else:
            submitter.submit(plan, recorded)
            if jobs:
                fired = Fired(schedule.name, due_at, Outcome.SUBMITTED, job_id=jobs[0])
            else:
                fired = record(Outcome.FAILED, "the submission recorded no job")
    except RimeBatchError as exc:
        if jobs:  # the job exists and carries its own error
            fired = Fired(schedule.name, due_at, Outcome.SUBMITTED, jobs[0], first_line(exc))
        else:
            fired = record(Outcome.FAILED, first_line(exc))
    except BaseException as exc:
        # A bug, a lost database, Ctrl-C: said on the run, then raised. A run left claimed
        # would read as still being submitted.
        if not jobs:
            why = "interrupted" if isinstance(exc, KeyboardInterrupt) else first_line(exc)
            # Best effort: the database may be what failed, and the error raised is the news.
            with contextlib.suppress(Exception):
                record(Outcome.FAILED, f"{type(exc).__name__}: {why}")
        raise
    log.info(
        "schedule %s due %s: %s%s%s",
        fired.schedule,
        f"{due_at:%Y-%m-%d %H:%M:%S}Z",
        fired.outcome.value,
        f" job={fired.job_id}" if fired.job_id else "",
        f" error={fired.error}" if fired.error else "",
    )
    return fired
