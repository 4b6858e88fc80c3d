"""Read-only views of the job table: job lists, status summaries, work still to do."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, case, exists, func, select, union_all
from sqlalchemy.orm import Session

from pipeline.store.errors import JobNotFound
from pipeline.store.schema import SCRIPTS, SEGMENTS, JobRow, OutputFile, ScriptRow, SegmentRow
from pipeline.store.states import State

_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class ScriptStatus:
    """One script's line in a status table."""

    script_pk: int
    script_id: str
    state: State
    segments: int
    segments_done: int
    segments_failed: int
    attempts: int
    chars: int
    billed_chars: int
    audio_seconds: float | None
    outputs: tuple[OutputFile, ...]
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def output_uris(self) -> tuple[str, ...]:
        """Where each encoded file was stored, in format order."""
        return tuple(o.uri for o in self.outputs)


@dataclass(frozen=True)
class JobStatus:
    """One job's line in a job list, with totals over its scripts."""

    job_id: str
    name: str
    manifest: str
    destination: str
    state: State
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    scripts: int
    scripts_done: int
    chars: int
    billed_chars: int
    audio_seconds: float


@dataclass(frozen=True)
class JobSummary:
    """A job and each of its scripts, for `status`."""

    job: JobStatus
    scripts: tuple[ScriptStatus, ...]


@dataclass(frozen=True)
class SegmentRef:
    """A segment's row id and where it belongs, for an executor to schedule."""

    segment_pk: int
    script_pk: int
    script_id: str
    index: int
    state: State


def resolve_job_id(session: Session, text: str) -> str:
    """The job id the user meant: an exact id or a unique prefix of one."""
    wanted = text.strip().lower()
    if not wanted or not _HEX.fullmatch(wanted):
        raise JobNotFound(f"{text!r} is not a job id")
    if session.get(JobRow, wanted) is not None:
        return wanted
    matches = session.scalars(
        select(JobRow.id).where(JobRow.id.startswith(wanted, autoescape=True)).limit(2)
    ).all()
    if not matches:
        raise JobNotFound(f"no job {text!r}")
    if len(matches) > 1:
        raise JobNotFound(f"{text!r} matches several jobs; give more characters")
    return matches[0]


def _job_rows(
    session: Session, *criteria: ColumnElement[bool], limit: int | None = None
) -> list[JobStatus]:
    totals = (
        select(
            ScriptRow.job_id,
            func.count().label("scripts"),
            func.coalesce(func.sum(case((ScriptRow.state == State.DONE, 1), else_=0)), 0).label(
                "done"
            ),
            func.coalesce(func.sum(ScriptRow.chars), 0).label("chars"),
            func.coalesce(func.sum(ScriptRow.billed_chars), 0).label("billed"),
            func.coalesce(func.sum(ScriptRow.audio_seconds), 0.0).label("seconds"),
        )
        .group_by(ScriptRow.job_id)
        .subquery()
    )
    query = (
        select(JobRow, totals)
        .outerjoin(totals, totals.c.job_id == JobRow.id)
        .where(*criteria)
        .order_by(JobRow.created_at.desc(), JobRow.id)
        .limit(limit)
    )
    return [
        JobStatus(
            job_id=job.id,
            name=job.name,
            manifest=job.manifest,
            destination=job.destination,
            state=job.state,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            error=job.error,
            scripts=int(row.scripts or 0),
            scripts_done=int(row.done or 0),
            chars=int(row.chars or 0),
            billed_chars=int(row.billed or 0),
            audio_seconds=float(row.seconds or 0.0),
        )
        for row in session.execute(query)
        for job in [row.JobRow]
    ]


def list_jobs(session: Session, *, limit: int = 20, state: State | None = None) -> list[JobStatus]:
    """The newest jobs first, optionally only those in `state`."""
    criteria: list[ColumnElement[bool]] = [] if state is None else [JobRow.state == state]
    return _job_rows(session, *criteria, limit=limit)


def job_summary(session: Session, job_id: str) -> JobSummary:
    """The job's totals and a line per script, in plan order."""
    rows = _job_rows(session, JobRow.id == job_id)
    if not rows:
        raise JobNotFound(f"no job {job_id!r}")
    counts = (
        select(
            SegmentRow.script_pk,
            func.count().label("segments"),
            func.sum(case((SegmentRow.state == State.DONE, 1), else_=0)).label("done"),
            func.sum(case((SegmentRow.state == State.FAILED, 1), else_=0)).label("failed"),
            func.sum(SegmentRow.attempts).label("attempts"),
        )
        .where(SegmentRow.job_id == job_id)
        .group_by(SegmentRow.script_pk)
        .subquery()
    )
    query = (
        select(ScriptRow, counts)
        .outerjoin(counts, counts.c.script_pk == ScriptRow.id)
        .where(ScriptRow.job_id == job_id)
        .order_by(ScriptRow.position)
    )
    scripts = tuple(
        ScriptStatus(
            script_pk=script.id,
            script_id=script.script_id,
            state=script.state,
            segments=int(row.segments or 0),
            segments_done=int(row.done or 0),
            segments_failed=int(row.failed or 0),
            attempts=int(row.attempts or 0),
            chars=script.chars,
            billed_chars=script.billed_chars,
            audio_seconds=script.audio_seconds,
            outputs=tuple(OutputFile(**o) for o in script.outputs),
            error=script.error,
            started_at=script.started_at,
            finished_at=script.finished_at,
        )
        for row in session.execute(query)
        for script in [row.ScriptRow]
    )
    return JobSummary(job=rows[0], scripts=scripts)


def list_segments(
    session: Session, job_id: str, states: Collection[State] | None = None
) -> list[SegmentRef]:
    """The job's segments in plan order, optionally only those in `states`."""
    query = (
        select(
            SegmentRow.id,
            SegmentRow.script_pk,
            ScriptRow.script_id,
            SegmentRow.index,
            SegmentRow.state,
        )
        .join(ScriptRow, SegmentRow.script_pk == ScriptRow.id)
        .where(SegmentRow.job_id == job_id)
        .order_by(ScriptRow.position, SegmentRow.index)
    )
    if states is not None:
        query = query.where(SegmentRow.state.in_(list(states)))
    return [SegmentRef(*row) for row in session.execute(query)]


def all_segments_done() -> ColumnElement[bool]:
    """Whether every segment of the script in the enclosing query is done: a stitch is due."""
    return ~exists().where(SEGMENTS.c.script_pk == SCRIPTS.c.id, SEGMENTS.c.state != State.DONE)


def stitchable_scripts(session: Session, job_id: str) -> list[int]:
    """Row ids of pending scripts whose segments are all done (a stitch claim is due)."""
    query = (
        select(ScriptRow.id)
        .where(
            and_(ScriptRow.job_id == job_id, ScriptRow.state == State.PENDING), all_segments_done()
        )
        .order_by(ScriptRow.position)
    )
    return list(session.scalars(query))


@dataclass(frozen=True)
class Outstanding:
    """What a job still needs: its pending segments in plan order, and its due stitches."""

    segments: tuple[int, ...]
    stitches: tuple[int, ...]


def outstanding(session: Session, job_id: str) -> Outstanding:
    """The work an executor starting (or resuming, or sweeping) the job has to schedule."""
    pending = session.scalars(
        select(SegmentRow.id)
        .join(ScriptRow, SegmentRow.script_pk == ScriptRow.id)
        .where(SegmentRow.job_id == job_id, SegmentRow.state == State.PENDING)
        .order_by(ScriptRow.position, SegmentRow.index)
    )
    return Outstanding(tuple(pending), tuple(stitchable_scripts(session, job_id)))


def last_activity(session: Session, job_id: str) -> datetime | None:
    """When the job's work last moved: its latest claim or finish of a segment or a script.

    A distributed executor cannot tell a dead worker from a slow one by asking it; it can only
    see how long ago the job table last changed.
    """
    moments = union_all(
        select(func.max(JobRow.started_at).label("at")).where(JobRow.id == job_id),
        select(func.max(SegmentRow.started_at)).where(SegmentRow.job_id == job_id),
        select(func.max(SegmentRow.finished_at)).where(SegmentRow.job_id == job_id),
        select(func.max(ScriptRow.stitch_started_at)).where(ScriptRow.job_id == job_id),
        select(func.max(ScriptRow.finished_at)).where(ScriptRow.job_id == job_id),
    ).subquery()
    # max() keeps the column's type, so the value comes back timezone-aware on SQLite too.
    latest: datetime | None = session.scalar(select(func.max(moments.c.at)))
    return latest
