"""State changes of jobs, scripts and segments, and what each change makes due next.

Every change is one UPDATE with the expected current state in its WHERE clause
(compare-and-set): of two workers racing for the same row, exactly one sees a row updated.
Functions take a Connection and never commit; the caller owns the transaction, one per change:

    with db.begin() as conn:
        if not claim_segment(conn, segment_pk):
            return  # someone else has it

A claim (of a segment to synthesize, of a script to stitch) names its token and its executor
(see `pipeline.store.executors`): finishing, failing or releasing it compares the token, so a
worker whose claim was taken over (or cancelled) cannot finish over its successor, and a claim
whose executor stopped beating can be taken over.

Rows are always locked in the order segments, scripts, jobs, so two transactions cannot wait
on each other in a cycle.

What comes next is decided here, once, in the transaction of the change that makes it due:
finishing a segment locks its script's row before asking whether every segment is done, and
finishing or failing a script locks its job's row before asking whether any script is still to
run (on SQLite every transaction holds the database's write lock from its start instead). Of
two workers finishing a script's last two segments at once, the second waits for the first to
commit and then sees both done, so exactly one of them is told to stitch (and exactly one
finisher of a job's last scripts is told to settle it). The answer is a `Next`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    Table,
    bindparam,
    exists,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from pipeline.loudness import LoudnessRecord
from pipeline.store import productions
from pipeline.store.database import holds_write_lock
from pipeline.store.errors import IllegalTransition, JobNotFound, StoreError
from pipeline.store.executors import alive
from pipeline.store.schema import BOOKS, JOBS, SCRIPTS, SEGMENTS, BookFile, OutputFile, utcnow
from pipeline.store.states import State, check_transition
from pipeline.store.views import all_segments_done

# Errors are kept for people to read; a whole traceback does not belong in a status table.
MAX_ERROR_CHARS = 2000

_ACTIVE = (State.PENDING, State.RUNNING)


@dataclass(frozen=True)
class Next:
    """What a change made due: a script to stitch, a job to settle, or (both None) nothing."""

    stitch: int | None = None  # row id of a script whose segments are now all done
    settle: str | None = None  # id of a job with no script left to run


NOTHING = Next()

# Why a segment was claimed again while marked running.
TAKEN_OVER = "taken over: the executor that claimed it stopped"


@dataclass(frozen=True)
class Claim:
    """Who claims a row: the claim's own token, and the executor (process) holding it."""

    token: str
    executor: str

    @property
    def values(self) -> dict[str, str]:
        """The row's claim columns."""
        return {"claim": self.token, "executor": self.executor}


_UNCLAIMED = {"claim": None, "executor": None}


# The statements every segment and script runs, built once: constructing a statement costs
# more than executing it on SQLite. Plain tables, not the ORM classes, so no ORM bulk-update
# machinery runs either. Parameters end in an underscore (a bind may not share a column's name).

_CLAIM_SEGMENT = (
    update(SEGMENTS)
    .where(
        SEGMENTS.c.id == bindparam("pk_"),
        SEGMENTS.c.state == State.PENDING,
        exists().where(SCRIPTS.c.id == SEGMENTS.c.script_pk, SCRIPTS.c.state == State.PENDING),
    )
    .values(
        state=State.RUNNING,
        started_at=bindparam("now_"),
        finished_at=None,
        claim=bindparam("claim_"),
        executor=bindparam("executor_"),
    )
    .returning(
        SEGMENTS.c.script_pk,
        SEGMENTS.c.job_id,
        # Read in the claim itself, so the two updates below run only when they would match.
        # Spelled out: SQLite's compiler leaves a RETURNING clause's columns unqualified, and
        # a bare `script_pk` would bind to whatever table nearest has a column of that name.
        select(SCRIPTS.c.started_at)
        .where(SCRIPTS.c.id == literal_column("segments.script_pk"))
        .scalar_subquery(),
        select(JOBS.c.state)
        .where(JOBS.c.id == literal_column("segments.job_id"))
        .scalar_subquery(),
    )
)
# Both only match (and lock) the first time: the first claim starts the script and the job.
_START_SCRIPT = (
    update(SCRIPTS)
    .where(SCRIPTS.c.id == bindparam("pk_"), SCRIPTS.c.started_at.is_(None))
    .values(started_at=bindparam("now_"))
)
_START_JOB = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("pk_"), JOBS.c.state == State.PENDING)
    .values(state=State.RUNNING, started_at=func.coalesce(JOBS.c.started_at, bindparam("now_")))
)
_FINISH_SEGMENT = (
    update(SEGMENTS)
    .where(
        SEGMENTS.c.id == bindparam("pk_"),
        SEGMENTS.c.state == State.RUNNING,
        SEGMENTS.c.claim == bindparam("claim_"),
    )
    .values(
        state=State.DONE,
        audio_seconds=bindparam("seconds_"),
        finished_at=bindparam("now_"),
        attempts=SEGMENTS.c.attempts + bindparam("attempts_"),
    )
    .returning(SEGMENTS.c.script_pk)
)
_BILL_SEGMENT = (
    update(SEGMENTS)
    .where(SEGMENTS.c.id == bindparam("pk_"))
    .values(billed_chars=SEGMENTS.c.billed_chars + bindparam("billed_"))
    .returning(SEGMENTS.c.script_pk)
)
_COUNT_ATTEMPT = (
    update(SEGMENTS)
    .where(SEGMENTS.c.id == bindparam("pk_"))
    .values(
        attempts=SEGMENTS.c.attempts + 1,
        billed_chars=SEGMENTS.c.billed_chars + bindparam("billed_"),
        last_error=func.coalesce(bindparam("error_"), SEGMENTS.c.last_error),
    )
    .returning(SEGMENTS.c.script_pk)
)
_BILL_SCRIPT = (
    update(SCRIPTS)
    .where(SCRIPTS.c.id == bindparam("pk_"))
    .values(billed_chars=SCRIPTS.c.billed_chars + bindparam("billed_"))
)
_STITCH_DUE = select(SCRIPTS.c.id).where(
    SCRIPTS.c.id == bindparam("pk_"),
    SCRIPTS.c.state == State.PENDING,
    all_segments_done(),
)
_LOCK_JOB = select(JOBS.c.id).where(JOBS.c.id == bindparam("pk_")).with_for_update()
_SCRIPTS_ACTIVE = select(
    exists().where(
        SCRIPTS.c.job_id == bindparam("pk_"), SCRIPTS.c.state.in_([State.PENDING, State.RUNNING])
    )
)
_CLAIM_STITCH = (
    update(SCRIPTS)
    .where(
        SCRIPTS.c.id == bindparam("pk_"),
        SCRIPTS.c.state == State.PENDING,
        all_segments_done(),
    )
    .values(
        state=State.RUNNING,
        stitch_started_at=bindparam("now_"),
        claim=bindparam("claim_"),
        executor=bindparam("executor_"),
    )
)
_FINISH_SCRIPT = (
    update(SCRIPTS)
    .where(
        SCRIPTS.c.id == bindparam("pk_"),
        SCRIPTS.c.state == State.RUNNING,
        SCRIPTS.c.claim == bindparam("claim_"),
    )
    .values(
        state=State.DONE,
        audio_seconds=bindparam("seconds_"),
        outputs=bindparam("outputs_"),
        loudness=bindparam("loudness_"),
        warnings=bindparam("warnings_"),
        error=None,
        finished_at=bindparam("now_"),
    )
    .returning(SCRIPTS.c.job_id)
)


def _stitch_due(conn: Connection, script_pk: int) -> Next:
    due = conn.execute(_STITCH_DUE, {"pk_": script_pk}).scalar_one_or_none()
    return Next(stitch=script_pk) if due is not None else NOTHING


def _settle_due(conn: Connection, job_id: str) -> Next:
    if not holds_write_lock(conn):
        # Taking the job's row first makes finishers of its last scripts answer one after another.
        conn.execute(_LOCK_JOB, {"pk_": job_id})
    active = conn.execute(_SCRIPTS_ACTIVE, {"pk_": job_id}).scalar()
    return NOTHING if active else Next(settle=job_id)


def _clip(error: str) -> str:
    return error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 1] + "…"


def _cas(
    conn: Connection,
    model: Table,
    row: ColumnElement[bool],
    *,
    expected: Collection[State],
    target: State,
    **values: Any,
) -> int:
    """Set `target` on the rows matching `row` whose state is one of `expected`; the count."""
    check_transition(model.name, expected, target)
    statement = (
        update(model).where(row, model.c.state.in_(list(expected))).values(state=target, **values)
    )
    result = conn.execute(statement)
    # A bulk UPDATE always yields a CursorResult; the Connection's signature does not say so.
    assert isinstance(result, CursorResult)
    return result.rowcount


def _cas_one(
    conn: Connection,
    model: Table,
    row: ColumnElement[bool],
    *,
    expected: Collection[State],
    target: State,
    **values: Any,
) -> bool:
    """`_cas` on a single row: whether we won it."""
    return _cas(conn, model, row, expected=expected, target=target, **values) == 1


# Segments


def claim_segment(conn: Connection, segment_pk: int, claim: Claim) -> bool:
    """pending -> running, unless its script has failed or was cancelled; True if we won."""
    check_transition("segment", [State.PENDING], State.RUNNING)
    now = utcnow()
    claimed = conn.execute(
        _CLAIM_SEGMENT,
        {"pk_": segment_pk, "now_": now, "claim_": claim.token, "executor_": claim.executor},
    ).one_or_none()
    if claimed is None:
        return False
    script_pk, job_id, script_started, job_state = claimed
    if script_started is None:
        conn.execute(_START_SCRIPT, {"pk_": script_pk, "now_": now})
    if job_state == State.PENDING:
        conn.execute(_START_JOB, {"pk_": job_id, "now_": now})
    return True


def take_over_segment(
    conn: Connection, segment_pk: int, claim: Claim, *, dead_before: datetime
) -> bool:
    """running -> running under `claim`, when the executor holding it has not beaten since
    `dead_before` (it died); True if we took it over."""
    return _take_over(conn, SEGMENTS, segment_pk, claim, dead_before, last_error=TAKEN_OVER)


def _take_over(
    conn: Connection,
    table: Table,
    pk: int,
    claim: Claim,
    dead_before: datetime,
    **values: Any,
) -> bool:
    script_pk = SEGMENTS.c.script_pk if table is SEGMENTS else SCRIPTS.c.id
    dead = conn.execute(
        select(table.c.claim).where(
            table.c.id == pk,
            table.c.state == State.RUNNING,
            ~alive(table.c.executor, dead_before),
            # A cancelled or failed script's work is not taken up again.
            exists().where(SCRIPTS.c.id == script_pk, SCRIPTS.c.state.in_(_ACTIVE)),
        )
    ).one_or_none()
    if dead is None:
        return False
    result = conn.execute(
        update(table)
        .where(
            table.c.id == pk,
            table.c.state == State.RUNNING,
            _is_claim(table, [dead.claim]),
            ~alive(table.c.executor, dead_before),
        )
        .values(**claim.values, **values)
    )
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def _is_claim(table: Table, tokens: Collection[str | None]) -> ColumnElement[bool]:
    """The row still holds one of these claims (None: no claim at all).

    What makes a takeover compare-and-set: PostgreSQL rechecks a row that a concurrent
    transaction changed against its own columns only, not against the executors table the
    statement joined, so of two takers of one dead claim both would pass a condition on the
    holder's heartbeat alone; the second sees the claim is no longer the dead one.
    """
    known = [token for token in tokens if token is not None]
    matches = table.c.claim.in_(known)
    return matches | table.c.claim.is_(None) if None in tokens else matches


def bill_segment(conn: Connection, segment_pk: int, billed_chars: int) -> None:
    """Add what Rime billed for an attempt of the segment (as its first audio byte arrives)."""
    if billed_chars < 0:
        raise ValueError("billed_chars must be >= 0")
    # No state condition: a request that reached the server is billed even when the segment
    # was cancelled or taken over meanwhile.
    script_pk = conn.execute(
        _BILL_SEGMENT, {"pk_": segment_pk, "billed_": billed_chars}
    ).scalar_one_or_none()
    if script_pk is None:
        raise StoreError(f"no segment {segment_pk}")
    conn.execute(_BILL_SCRIPT, {"pk_": script_pk, "billed_": billed_chars})


def record_attempt(
    conn: Connection, segment_pk: int, *, billed_chars: int, error: str | None = None
) -> None:
    """Count one request: attempts += 1, billed characters += billed_chars (0 if unsent or
    billed already by `bill_segment`)."""
    if billed_chars < 0:
        raise ValueError("billed_chars must be >= 0")
    script_pk = conn.execute(
        _COUNT_ATTEMPT,
        {
            "pk_": segment_pk,
            "billed_": billed_chars,
            "error_": None if error is None else _clip(error),
        },
    ).scalar_one_or_none()
    if script_pk is None:
        raise StoreError(f"no segment {segment_pk}")
    if billed_chars:
        conn.execute(_BILL_SCRIPT, {"pk_": script_pk, "billed_": billed_chars})


def finish_segment(
    conn: Connection,
    segment_pk: int,
    claim: Claim,
    *,
    audio_seconds: float,
    synthesized: bool = False,
) -> Next | None:
    """running -> done; None if the claim was lost meanwhile (taken over or cancelled).

    `synthesized`: a request produced the audio (it counts as an attempt; `bill_segment` has
    billed it); False when it came from the cache. Returns the script's stitch when this was
    its last segment.
    """
    finished = conn.execute(
        _FINISH_SEGMENT,
        {
            "pk_": segment_pk,
            "claim_": claim.token,
            "seconds_": audio_seconds,
            "now_": utcnow(),
            "attempts_": 1 if synthesized else 0,
        },
    ).scalar_one_or_none()
    if finished is None:
        return None
    if not holds_write_lock(conn):
        # Written though it adds nothing: the update takes the script's row lock, which makes
        # the last finishers of one script ask `_stitch_due` one after the other.
        conn.execute(_BILL_SCRIPT, {"pk_": finished, "billed_": 0})
    return _stitch_due(conn, finished)


def fail_segment(conn: Connection, segment_pk: int, claim: Claim, error: str) -> Next | None:
    """running -> failed for good, and its script with it; None if the claim was lost.

    Returns the job's settle when its script was the last one still to run.
    """
    check_transition("segment", [State.RUNNING], State.FAILED)
    check_transition("script", [State.PENDING], State.FAILED)
    now = utcnow()
    failed = conn.execute(
        update(SEGMENTS)
        .where(
            SEGMENTS.c.id == segment_pk,
            SEGMENTS.c.state == State.RUNNING,
            SEGMENTS.c.claim == claim.token,
        )
        .values(state=State.FAILED, last_error=_clip(error), finished_at=now)
        .returning(SEGMENTS.c.script_pk, SEGMENTS.c.index, SEGMENTS.c.job_id)
    ).one_or_none()
    if failed is None:
        return None
    script_pk, index, job_id = failed
    failed_script = _cas(
        conn,
        SCRIPTS,
        SCRIPTS.c.id == script_pk,
        expected=[State.PENDING],
        target=State.FAILED,
        error=_clip(f"segment {index}: {error}"),
        finished_at=now,
    )
    # A script that had failed already was counted when it did.
    return _settle_due(conn, job_id) if failed_script else NOTHING


def release_segment(
    conn: Connection, segment_pk: int, claim: Claim, error: str | None = None
) -> bool:
    """running -> pending, to be claimed again (a retry later, a worker shutting down)."""
    values: dict[str, Any] = {"started_at": None, "finished_at": None, **_UNCLAIMED}
    if error is not None:
        values["last_error"] = _clip(error)
    return _cas_one(
        conn,
        SEGMENTS,
        (SEGMENTS.c.id == segment_pk) & (SEGMENTS.c.claim == claim.token),
        expected=[State.RUNNING],
        target=State.PENDING,
        **values,
    )


def requeue_orphans(
    conn: Connection, *, dead_before: datetime, job_id: str | None = None
) -> tuple[int, int]:
    """Claims whose executor has not beaten since `dead_before` -> pending, to be sent again.

    Returns (segments, stitches) requeued.
    """
    segments = _requeue(conn, SEGMENTS, dead_before, job_id, started_at=None, last_error=TAKEN_OVER)
    stitches = _requeue(conn, SCRIPTS, dead_before, job_id, stitch_started_at=None)
    return segments, stitches


def _requeue(
    conn: Connection, model: Table, dead_before: datetime, job_id: str | None, **values: Any
) -> int:
    row = ~alive(model.c.executor, dead_before)
    if job_id is not None:
        row = row & (model.c.job_id == job_id)
    orphans = list(conn.scalars(select(model.c.claim).where(row, model.c.state == State.RUNNING)))
    if not orphans:
        return 0
    # Only the dead claims just read: one taken over meanwhile is a live executor's.
    return _cas(
        conn,
        model,
        row & _is_claim(model, orphans),
        expected=[State.RUNNING],
        target=State.PENDING,
        **_UNCLAIMED,
        **values,
    )


# Scripts


def claim_stitch(conn: Connection, script_pk: int, claim: Claim) -> bool:
    """pending -> running once every segment is done: True for exactly one caller."""
    check_transition("script", [State.PENDING], State.RUNNING)
    result = conn.execute(
        _CLAIM_STITCH,
        {"pk_": script_pk, "now_": utcnow(), "claim_": claim.token, "executor_": claim.executor},
    )
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def take_over_stitch(
    conn: Connection, script_pk: int, claim: Claim, *, dead_before: datetime
) -> bool:
    """A stitch whose executor has not beaten since `dead_before`, under `claim`; True if won."""
    return _take_over(conn, SCRIPTS, script_pk, claim, dead_before, stitch_started_at=utcnow())


def finish_script(
    conn: Connection,
    script_pk: int,
    claim: Claim,
    *,
    audio_seconds: float,
    outputs: Sequence[OutputFile],
    loudness: LoudnessRecord | None = None,
    warnings: Sequence[str] = (),
) -> Next | None:
    """running -> done with the stitched outputs (one entry per encoded file), their measured
    loudness and any warnings; None if lost.

    Returns the job's settle when this was the last of its scripts still to run.
    """
    check_transition("script", [State.RUNNING], State.DONE)
    job_id = conn.execute(
        _FINISH_SCRIPT,
        {
            "pk_": script_pk,
            "claim_": claim.token,
            "seconds_": audio_seconds,
            "outputs_": [asdict(o) for o in outputs],
            "loudness_": None if loudness is None else asdict(loudness),
            "warnings_": list(warnings) or None,
            "now_": utcnow(),
        },
    ).scalar_one_or_none()
    return None if job_id is None else _settle_due(conn, job_id)


def fail_script(conn: Connection, script_pk: int, claim: Claim, error: str) -> Next | None:
    """running -> failed (stitching failed for good); None if the claim was lost.

    Returns the job's settle when this was the last of its scripts still to run.
    """
    check_transition("script", [State.RUNNING], State.FAILED)
    job_id = conn.scalar(
        update(SCRIPTS)
        .where(
            SCRIPTS.c.id == script_pk,
            SCRIPTS.c.state == State.RUNNING,
            SCRIPTS.c.claim == claim.token,
        )
        .values(state=State.FAILED, error=_clip(error), finished_at=utcnow())
        .returning(SCRIPTS.c.job_id)
    )
    return None if job_id is None else _settle_due(conn, job_id)


def abandon_job(conn: Connection, job_id: str, reason: str) -> Next:
    """Fail every script of the job still waiting for its segments, sending nothing more.

    Their pending segments stay pending: never tried, so a resume picks them up. Scripts being
    stitched finish as usual. Returns the job's settle when nothing is left to run.
    """
    check_transition("script", [State.PENDING], State.FAILED)
    conn.execute(
        update(SCRIPTS)
        .where(SCRIPTS.c.job_id == job_id, SCRIPTS.c.state == State.PENDING)
        .values(state=State.FAILED, error=_clip(reason), finished_at=utcnow())
    )
    return _settle_due(conn, job_id)


def release_script(conn: Connection, script_pk: int, claim: Claim) -> bool:
    """running -> pending, so stitching can be claimed again."""
    return _cas_one(
        conn,
        SCRIPTS,
        (SCRIPTS.c.id == script_pk) & (SCRIPTS.c.claim == claim.token),
        expected=[State.RUNNING],
        target=State.PENDING,
        stitch_started_at=None,
        **_UNCLAIMED,
    )


# Jobs


def start_job(conn: Connection, job_id: str, executor: str | None = None) -> bool:
    """pending|running -> running, run by `executor` (a render's) or, with None, by the workers.

    True when it was pending (claiming a segment starts a job too).
    """
    started = _cas_one(
        conn,
        JOBS,
        JOBS.c.id == job_id,
        expected=[State.PENDING],
        target=State.RUNNING,
        started_at=func.coalesce(JOBS.c.started_at, utcnow()),
        executor=executor,
    )
    if not started:
        conn.execute(
            update(JOBS)
            .where(JOBS.c.id == job_id, JOBS.c.state == State.RUNNING)
            .values(executor=executor)
        )
    return started


def lock_job(conn: Connection, job_id: str) -> State:
    """The job's state, its row locked until the transaction ends (so a change made next in it
    is known to be this transaction's); JobNotFound when there is no such job."""
    state = conn.scalar(select(JOBS.c.state).where(JOBS.c.id == job_id).with_for_update())
    if state is None:
        raise JobNotFound(f"no job {job_id!r}")
    return State(state)


def job_state(conn: Connection, job_id: str) -> State:
    """The job's state; JobNotFound when there is no such job."""
    state = conn.scalar(select(JOBS.c.state).where(JOBS.c.id == job_id))
    if state is None:
        raise JobNotFound(f"no job {job_id!r}")
    return State(state)


def settle_job(conn: Connection, job_id: str) -> State:
    """Roll a running job up to done (every script done) or failed (none left to run).

    Returns the job's state afterwards; safe to call at any time (it changes nothing while
    work is left).
    """
    now = utcnow()
    of_job = SCRIPTS.c.job_id == JOBS.c.id
    book = BOOKS.c.job_id == JOBS.c.id
    # A job with a book is done when its book is (assembled after every script is done).
    not_done = exists().where(of_job, SCRIPTS.c.state != State.DONE) | exists().where(
        book, BOOKS.c.state != State.DONE
    )
    if _cas(
        conn,
        JOBS,
        (JOBS.c.id == job_id) & ~not_done,
        expected=[State.RUNNING],
        target=State.DONE,
        finished_at=now,
        error=None,
    ):
        return State.DONE
    active = exists().where(of_job, SCRIPTS.c.state.in_(_ACTIVE)) | exists().where(
        book, BOOKS.c.state == State.RUNNING
    )
    failed = exists().where(of_job, SCRIPTS.c.state == State.FAILED) | exists().where(
        book, BOOKS.c.state == State.FAILED
    )
    count = conn.scalar(
        select(func.count()).where(SCRIPTS.c.job_id == job_id, SCRIPTS.c.state == State.FAILED)
    )
    book_error = conn.scalar(
        select(BOOKS.c.error).where(BOOKS.c.job_id == job_id, BOOKS.c.state == State.FAILED)
    )
    _cas(
        conn,
        JOBS,
        (JOBS.c.id == job_id) & ~active & failed,
        expected=[State.RUNNING],
        target=State.FAILED,
        finished_at=now,
        error=f"{count} script(s) failed" if count else f"the book failed: {book_error}",
    )
    return job_state(conn, job_id)


def reset_for_resume(conn: Connection, job_id: str) -> int:
    """Put a job's running, failed and cancelled work back to pending (done stays done); the
    number of segments reset.

    Only for a job no live executor is on (`executors.job_alive`): an interrupted run, a failed
    or a cancelled one.
    """
    current = job_state(conn, job_id)
    if current is State.DONE:
        raise IllegalTransition(f"job {job_id}", current.value, State.PENDING.value)
    stuck = (State.RUNNING, State.FAILED, State.CANCELLED)
    # Refused before anything changes: another job of the production is unfinished.
    production_id = conn.execute(
        select(JOBS.c.production_id).where(JOBS.c.id == job_id)
    ).scalar_one()
    if production_id is not None:
        productions.guard_unique(conn, production_id, job_id)
    reset = _cas(
        conn,
        SEGMENTS,
        SEGMENTS.c.job_id == job_id,
        expected=stuck,
        target=State.PENDING,
        started_at=None,
        finished_at=None,
        **_UNCLAIMED,
    )
    _cas(
        conn,
        SCRIPTS,
        SCRIPTS.c.job_id == job_id,
        expected=stuck,
        target=State.PENDING,
        error=None,
        stitch_started_at=None,
        finished_at=None,
        **_UNCLAIMED,
    )
    _cas(
        conn,
        BOOKS,
        BOOKS.c.job_id == job_id,
        expected=stuck,
        target=State.PENDING,
        error=None,
        started_at=None,
        finished_at=None,
        **_UNCLAIMED,
    )
    try:
        with conn.begin_nested():
            _cas(
                conn,
                JOBS,
                JOBS.c.id == job_id,
                expected=stuck,
                target=State.PENDING,
                error=None,
                finished_at=None,
            )
    except IntegrityError as exc:
        raise productions.translate_busy(conn, production_id, exc) from exc
    return reset


def cancel_job(conn: Connection, job_id: str) -> int:
    """pending|running -> cancelled for the job and its unfinished work; segments cancelled."""
    current = job_state(conn, job_id)
    if current not in _ACTIVE:
        raise IllegalTransition(f"job {job_id}", current.value, State.CANCELLED.value)
    now = utcnow()
    cancelled = _cas(
        conn,
        SEGMENTS,
        SEGMENTS.c.job_id == job_id,
        expected=_ACTIVE,
        target=State.CANCELLED,
        finished_at=now,
    )
    _cas(
        conn,
        SCRIPTS,
        SCRIPTS.c.job_id == job_id,
        expected=_ACTIVE,
        target=State.CANCELLED,
        finished_at=now,
    )
    _cas(
        conn,
        BOOKS,
        BOOKS.c.job_id == job_id,
        expected=_ACTIVE,
        target=State.CANCELLED,
        finished_at=now,
    )
    if not _cas(
        conn,
        JOBS,
        JOBS.c.id == job_id,
        expected=_ACTIVE,
        target=State.CANCELLED,
        finished_at=now,
    ):
        # It finished between our read and now; the caller's rollback undoes the above.
        raise IllegalTransition(
            f"job {job_id}", job_state(conn, job_id).value, State.CANCELLED.value
        )
    return cancelled


# Books


def claim_book(conn: Connection, job_id: str, claim: Claim, *, dead_before: datetime) -> bool:
    """The job's book pending -> running once every script of its running job is done, or a
    running one taken over from an executor silent since `dead_before`; True if we won."""
    check_transition("book", [State.PENDING], State.RUNNING)
    ready = (
        (BOOKS.c.job_id == job_id)
        & ~exists().where(SCRIPTS.c.job_id == job_id, SCRIPTS.c.state != State.DONE)
        & exists().where(JOBS.c.id == job_id, JOBS.c.state == State.RUNNING)
    )
    now = utcnow()
    if _cas_one(
        conn,
        BOOKS,
        ready,
        expected=[State.PENDING],
        target=State.RUNNING,
        started_at=now,
        error=None,
        **claim.values,
    ):
        return True
    dead = conn.execute(
        select(BOOKS.c.claim).where(
            ready, BOOKS.c.state == State.RUNNING, ~alive(BOOKS.c.executor, dead_before)
        )
    ).one_or_none()
    if dead is None:
        return False
    result = conn.execute(
        update(BOOKS)
        .where(
            ready,
            BOOKS.c.state == State.RUNNING,
            _is_claim(BOOKS, [dead.claim]),
            ~alive(BOOKS.c.executor, dead_before),
        )
        .values(started_at=now, **claim.values)
    )
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def finish_book(
    conn: Connection,
    job_id: str,
    claim: Claim,
    *,
    outputs: Sequence[BookFile],
    chapters: Sequence[dict[str, Any]],
) -> bool:
    """running -> done with the book's files and chapter times; False if the claim was lost."""
    return _cas_one(
        conn,
        BOOKS,
        (BOOKS.c.job_id == job_id) & (BOOKS.c.claim == claim.token),
        expected=[State.RUNNING],
        target=State.DONE,
        outputs=[asdict(o) for o in outputs],
        chapters=list(chapters),
        finished_at=utcnow(),
        error=None,
    )


def fail_book(conn: Connection, job_id: str, claim: Claim, error: str) -> bool:
    """running -> failed (assembling it failed; a resume tries again); False if lost."""
    return _cas_one(
        conn,
        BOOKS,
        (BOOKS.c.job_id == job_id) & (BOOKS.c.claim == claim.token),
        expected=[State.RUNNING],
        target=State.FAILED,
        error=_clip(error),
        finished_at=utcnow(),
    )


def release_book(conn: Connection, job_id: str, claim: Claim) -> bool:
    """running -> pending (interrupted), to be assembled again."""
    return _cas_one(
        conn,
        BOOKS,
        (BOOKS.c.job_id == job_id) & (BOOKS.c.claim == claim.token),
        expected=[State.RUNNING],
        target=State.PENDING,
        started_at=None,
        **_UNCLAIMED,
    )
