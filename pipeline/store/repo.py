"""State changes of jobs, scripts and segments.

Every change is one UPDATE with the expected current state in its WHERE clause
(compare-and-set): of two workers racing for the same row, exactly one sees a row updated.
Functions take a Session and never commit; the caller owns the transaction, one per change:

    with sessions.begin() as session:
        if not claim_segment(session, segment_id):
            return  # someone else has it

Rows are always locked in the order segments, scripts, jobs, so two transactions cannot wait
on each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, exists, func, select, update
from sqlalchemy.orm import Session

from pipeline.store.errors import IllegalTransition, JobNotFound, StoreError
from pipeline.store.models import Job, OutputFile, Script, Segment, utcnow
from pipeline.store.states import State, check_transition

# Errors are kept for people to read; a whole traceback does not belong in a status table.
MAX_ERROR_CHARS = 2000

_ACTIVE = (State.PENDING, State.RUNNING)


def _clip(error: str) -> str:
    return error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 1] + "…"


def _cas(
    session: Session,
    model: type[Job] | type[Script] | type[Segment],
    row: ColumnElement[bool],
    *,
    expected: Collection[State],
    target: State,
    **values: Any,
) -> int:
    """Set `target` on the rows matching `row` whose state is one of `expected`; the count."""
    check_transition(model.__tablename__, expected, target)
    statement = (
        update(model)
        .where(row, model.state.in_(list(expected)))
        .values(state=target, **values)
        .execution_options(synchronize_session=False)
    )
    result = session.execute(statement)
    # A bulk UPDATE always yields a CursorResult; the Session's signature does not say so.
    assert isinstance(result, CursorResult)
    return result.rowcount


def _cas_one(
    session: Session,
    model: type[Job] | type[Script] | type[Segment],
    row: ColumnElement[bool],
    *,
    expected: Collection[State],
    target: State,
    **values: Any,
) -> bool:
    """`_cas` on a single row: whether we won it."""
    return _cas(session, model, row, expected=expected, target=target, **values) == 1


# Segments


def claim_segment(session: Session, segment_id: int) -> bool:
    """pending -> running, unless its script has failed or was cancelled; True if we won."""
    check_transition("segment", [State.PENDING], State.RUNNING)
    now = utcnow()
    script_open = exists().where(Script.id == Segment.script_pk, Script.state == State.PENDING)
    claimed = session.execute(
        update(Segment)
        .where(Segment.id == segment_id, Segment.state == State.PENDING, script_open)
        .values(state=State.RUNNING, started_at=now, finished_at=None)
        .returning(Segment.script_pk, Segment.job_id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if claimed is None:
        return False
    script_pk, job_id = claimed
    # Both only match (and lock) the first time: the first claim starts the script and the job.
    session.execute(
        update(Script)
        .where(Script.id == script_pk, Script.started_at.is_(None))
        .values(started_at=now)
        .execution_options(synchronize_session=False)
    )
    _cas(
        session,
        Job,
        Job.id == job_id,
        expected=[State.PENDING],
        target=State.RUNNING,
        started_at=func.coalesce(Job.started_at, now),
    )
    return True


def record_attempt(
    session: Session, segment_id: int, *, billed_chars: int, error: str | None = None
) -> None:
    """Count one request: attempts += 1, billed characters += billed_chars (0 if unsent)."""
    if billed_chars < 0:
        raise ValueError("billed_chars must be >= 0")
    values: dict[str, Any] = {
        "attempts": Segment.attempts + 1,
        "billed_chars": Segment.billed_chars + billed_chars,
    }
    if error is not None:
        values["last_error"] = _clip(error)
    # Deliberately no state condition: a request that reached the server is billed even when
    # the segment was cancelled or reclaimed meanwhile.
    script_pk = session.execute(
        update(Segment)
        .where(Segment.id == segment_id)
        .values(**values)
        .returning(Segment.script_pk)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if script_pk is None:
        raise StoreError(f"no segment {segment_id}")
    if billed_chars:
        session.execute(
            update(Script)
            .where(Script.id == script_pk)
            .values(billed_chars=Script.billed_chars + billed_chars)
            .execution_options(synchronize_session=False)
        )


def finish_segment(session: Session, segment_id: int, *, audio_seconds: float) -> bool:
    """running -> done with the audio's duration; False if the claim was lost meanwhile."""
    return _cas_one(
        session,
        Segment,
        Segment.id == segment_id,
        expected=[State.RUNNING],
        target=State.DONE,
        audio_seconds=audio_seconds,
        finished_at=utcnow(),
    )


def fail_segment(session: Session, segment_id: int, error: str) -> bool:
    """running -> failed for good, and its script with it; False if the claim was lost."""
    check_transition("segment", [State.RUNNING], State.FAILED)
    check_transition("script", [State.PENDING], State.FAILED)
    now = utcnow()
    failed = session.execute(
        update(Segment)
        .where(Segment.id == segment_id, Segment.state == State.RUNNING)
        .values(state=State.FAILED, last_error=_clip(error), finished_at=now)
        .returning(Segment.script_pk, Segment.index)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if failed is None:
        return False
    script_pk, index = failed
    _cas(
        session,
        Script,
        Script.id == script_pk,
        expected=[State.PENDING],
        target=State.FAILED,
        error=_clip(f"segment {index}: {error}"),
        finished_at=now,
    )
    return True


def release_segment(session: Session, segment_id: int, error: str | None = None) -> bool:
    """running -> pending, to be claimed again (a retry later, a worker shutting down)."""
    values: dict[str, Any] = {"started_at": None, "finished_at": None}
    if error is not None:
        values["last_error"] = _clip(error)
    return _cas_one(
        session,
        Segment,
        Segment.id == segment_id,
        expected=[State.RUNNING],
        target=State.PENDING,
        **values,
    )


def requeue_stale(session: Session, *, older_than: timedelta, job_id: str | None = None) -> int:
    """Segments claimed longer ago than `older_than` (their worker died) -> pending; the count."""
    cutoff: datetime = utcnow() - older_than
    row = Segment.started_at < cutoff
    if job_id is not None:
        row = row & (Segment.job_id == job_id)
    return _cas(
        session,
        Segment,
        row,
        expected=[State.RUNNING],
        target=State.PENDING,
        started_at=None,
        last_error="requeued: claimed too long ago",
    )


# Scripts


def claim_stitch(session: Session, script_pk: int) -> bool:
    """pending -> running once every segment is done: True for exactly one caller.

    Call it in a new transaction after the one that finished the segment has committed (see
    pipeline.store.handoff): in the same transaction, two workers finishing the last two
    segments each still see the other's segment undone, and neither would stitch.
    """
    undone = exists().where(Segment.script_pk == Script.id, Segment.state != State.DONE)
    return _cas_one(
        session,
        Script,
        (Script.id == script_pk) & ~undone,
        expected=[State.PENDING],
        target=State.RUNNING,
        stitch_started_at=utcnow(),
    )


def finish_script(
    session: Session,
    script_pk: int,
    *,
    audio_seconds: float,
    outputs: Sequence[OutputFile],
) -> bool:
    """running -> done with the stitched outputs (one entry per encoded file)."""
    return _cas_one(
        session,
        Script,
        Script.id == script_pk,
        expected=[State.RUNNING],
        target=State.DONE,
        audio_seconds=audio_seconds,
        outputs=[asdict(o) for o in outputs],
        error=None,
        finished_at=utcnow(),
    )


def fail_script(session: Session, script_pk: int, error: str) -> bool:
    """pending|running -> failed (e.g. stitching failed for good)."""
    return _cas_one(
        session,
        Script,
        Script.id == script_pk,
        expected=_ACTIVE,
        target=State.FAILED,
        error=_clip(error),
        finished_at=utcnow(),
    )


def release_script(session: Session, script_pk: int) -> bool:
    """running -> pending, so stitching can be claimed again."""
    return _cas_one(
        session,
        Script,
        Script.id == script_pk,
        expected=[State.RUNNING],
        target=State.PENDING,
        stitch_started_at=None,
    )


# Jobs


def start_job(session: Session, job_id: str) -> bool:
    """pending -> running (claiming a segment does this too)."""
    return _cas_one(
        session,
        Job,
        Job.id == job_id,
        expected=[State.PENDING],
        target=State.RUNNING,
        started_at=func.coalesce(Job.started_at, utcnow()),
    )


def _job_state(session: Session, job_id: str) -> State:
    state = session.scalar(select(Job.state).where(Job.id == job_id))
    if state is None:
        raise JobNotFound(f"no job {job_id!r}")
    return state


def settle_job(session: Session, job_id: str) -> State:
    """Roll a running job up to done (every script done) or failed (none left to run).

    Returns the job's state afterwards. Like claim_stitch, call it after the change that
    finished or failed a script has committed (see pipeline.store.handoff).
    """
    now = utcnow()
    of_job = Script.job_id == Job.id
    not_done = exists().where(of_job, Script.state != State.DONE)
    if _cas(
        session,
        Job,
        (Job.id == job_id) & ~not_done,
        expected=[State.RUNNING],
        target=State.DONE,
        finished_at=now,
        error=None,
    ):
        return State.DONE
    active = exists().where(of_job, Script.state.in_(_ACTIVE))
    failed = exists().where(of_job, Script.state == State.FAILED)
    count = session.scalar(
        select(func.count()).where(Script.job_id == job_id, Script.state == State.FAILED)
    )
    _cas(
        session,
        Job,
        (Job.id == job_id) & ~active & failed,
        expected=[State.RUNNING],
        target=State.FAILED,
        finished_at=now,
        error=f"{count} script(s) failed",
    )
    return _job_state(session, job_id)


def reset_for_resume(session: Session, job_id: str) -> int:
    """Put a job's running and failed work back to pending (done stays done); segments reset.

    Only for a job no live worker is on: a crashed run, or a failed one.
    """
    current = _job_state(session, job_id)
    if current in {State.DONE, State.CANCELLED}:
        raise IllegalTransition(f"job {job_id}", current.value, State.PENDING.value)
    stuck = (State.RUNNING, State.FAILED)
    reset = _cas(
        session,
        Segment,
        Segment.job_id == job_id,
        expected=stuck,
        target=State.PENDING,
        started_at=None,
        finished_at=None,
    )
    _cas(
        session,
        Script,
        Script.job_id == job_id,
        expected=stuck,
        target=State.PENDING,
        error=None,
        stitch_started_at=None,
        finished_at=None,
    )
    _cas(
        session,
        Job,
        Job.id == job_id,
        expected=stuck,
        target=State.PENDING,
        error=None,
        finished_at=None,
    )
    return reset


def cancel_job(session: Session, job_id: str) -> int:
    """pending|running -> cancelled for the job and its unfinished work; segments cancelled."""
    current = _job_state(session, job_id)
    if current not in _ACTIVE:
        raise IllegalTransition(f"job {job_id}", current.value, State.CANCELLED.value)
    now = utcnow()
    cancelled = _cas(
        session,
        Segment,
        Segment.job_id == job_id,
        expected=_ACTIVE,
        target=State.CANCELLED,
        finished_at=now,
    )
    _cas(
        session,
        Script,
        Script.job_id == job_id,
        expected=_ACTIVE,
        target=State.CANCELLED,
        finished_at=now,
    )
    if not _cas(
        session,
        Job,
        Job.id == job_id,
        expected=_ACTIVE,
        target=State.CANCELLED,
        finished_at=now,
    ):
        # It finished between our read and now; the caller's rollback undoes the above.
        raise IllegalTransition(
            f"job {job_id}", _job_state(session, job_id).value, State.CANCELLED.value
        )
    return cancelled
