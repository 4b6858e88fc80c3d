"""Read-only views of the job table: job lists, status summaries, work still to do."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, case, exists, func, select
from sqlalchemy.orm import Session

from pipeline.store.errors import JobNotFound
from pipeline.store.models import Job, OutputFile, Script, Segment
from pipeline.store.states import State

_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class ScriptRow:
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
class JobRow:
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

    job: JobRow
    scripts: tuple[ScriptRow, ...]


@dataclass(frozen=True)
class SegmentRef:
    """A segment's row id and where it belongs, for an executor to schedule."""

    segment_id: int
    script_pk: int
    script_id: str
    index: int
    state: State


def resolve_job_id(session: Session, text: str) -> str:
    """The job id the user meant: an exact id or a unique prefix of one."""
    wanted = text.strip().lower()
    if not wanted or not _HEX.fullmatch(wanted):
        raise JobNotFound(f"{text!r} is not a job id")
    if session.get(Job, wanted) is not None:
        return wanted
    matches = session.scalars(
        select(Job.id).where(Job.id.startswith(wanted, autoescape=True)).limit(2)
    ).all()
    if not matches:
        raise JobNotFound(f"no job {text!r}")
    if len(matches) > 1:
        raise JobNotFound(f"{text!r} matches several jobs; give more characters")
    return matches[0]


def _job_rows(
    session: Session, *criteria: ColumnElement[bool], limit: int | None = None
) -> list[JobRow]:
    totals = (
        select(
            Script.job_id,
            func.count().label("scripts"),
            func.coalesce(func.sum(case((Script.state == State.DONE, 1), else_=0)), 0).label(
                "done"
            ),
            func.coalesce(func.sum(Script.chars), 0).label("chars"),
            func.coalesce(func.sum(Script.billed_chars), 0).label("billed"),
            func.coalesce(func.sum(Script.audio_seconds), 0.0).label("seconds"),
        )
        .group_by(Script.job_id)
        .subquery()
    )
    query = (
        select(Job, totals)
        .outerjoin(totals, totals.c.job_id == Job.id)
        .where(*criteria)
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
    )
    return [
        JobRow(
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
        for job in [row.Job]
    ]


def list_jobs(session: Session, *, limit: int = 20, state: State | None = None) -> list[JobRow]:
    """The newest jobs first, optionally only those in `state`."""
    criteria: list[ColumnElement[bool]] = [] if state is None else [Job.state == state]
    return _job_rows(session, *criteria, limit=limit)


def job_summary(session: Session, job_id: str) -> JobSummary:
    """The job's totals and a line per script, in plan order."""
    rows = _job_rows(session, Job.id == job_id)
    if not rows:
        raise JobNotFound(f"no job {job_id!r}")
    counts = (
        select(
            Segment.script_pk,
            func.count().label("segments"),
            func.sum(case((Segment.state == State.DONE, 1), else_=0)).label("done"),
            func.sum(case((Segment.state == State.FAILED, 1), else_=0)).label("failed"),
            func.sum(Segment.attempts).label("attempts"),
        )
        .where(Segment.job_id == job_id)
        .group_by(Segment.script_pk)
        .subquery()
    )
    query = (
        select(Script, counts)
        .outerjoin(counts, counts.c.script_pk == Script.id)
        .where(Script.job_id == job_id)
        .order_by(Script.position)
    )
    scripts = tuple(
        ScriptRow(
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
        for script in [row.Script]
    )
    return JobSummary(job=rows[0], scripts=scripts)


def list_segments(
    session: Session, job_id: str, states: Collection[State] | None = None
) -> list[SegmentRef]:
    """The job's segments in plan order, optionally only those in `states`."""
    query = (
        select(Segment.id, Segment.script_pk, Script.script_id, Segment.index, Segment.state)
        .join(Script, Segment.script_pk == Script.id)
        .where(Segment.job_id == job_id)
        .order_by(Script.position, Segment.index)
    )
    if states is not None:
        query = query.where(Segment.state.in_(list(states)))
    return [SegmentRef(*row) for row in session.execute(query)]


def stitchable_scripts(session: Session, job_id: str) -> list[int]:
    """Row ids of pending scripts whose segments are all done (a stitch claim is due)."""
    undone = exists().where(Segment.script_pk == Script.id, Segment.state != State.DONE)
    query = (
        select(Script.id)
        .where(and_(Script.job_id == job_id, Script.state == State.PENDING), ~undone)
        .order_by(Script.position)
    )
    return list(session.scalars(query))
