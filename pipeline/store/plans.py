"""A JobPlan into rows and back: record_plan writes it, load_plan rebuilds it exactly."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar, get_origin, get_type_hints

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from pipeline.plan import JobPlan, OutputSpec, PlannedSegment, ScriptPlan
from pipeline.rime.params import VoiceParams
from pipeline.store.errors import JobNotFound, StoreError
from pipeline.store.schema import JobRow, ScriptRow, SegmentRow, utcnow
from pipeline.store.states import State

T = TypeVar("T")


def new_job_id() -> str:
    """A fresh job id: 12 hex characters."""
    return uuid.uuid4().hex[:12]


def _from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    # JSON has no tuples; fields typed as tuples come back as lists. Keys a later version of the
    # dataclass no longer has are dropped, and fields it added keep their defaults.
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for field in fields(cls):  # type: ignore[arg-type]
        if field.name not in data:
            continue
        value = data[field.name]
        if value is not None and get_origin(hints[field.name]) is tuple:
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def record_plan(session: Session, plan: JobPlan) -> str:
    """Write a job with its scripts and segments, all pending; returns the new job id."""
    job_id = new_job_id()
    job = JobRow(
        id=job_id,
        name=plan.name,
        manifest=plan.manifest,
        destination=plan.destination,
        state=State.PENDING,
        created_at=utcnow(),
    )
    session.add(job)
    scripts = [
        ScriptRow(
            job=job,
            position=position,
            script_id=script.script_id,
            state=State.PENDING,
            params=asdict(script.params),
            output=asdict(script.output),
            lead_pause_ms=script.lead_pause_ms,
            chars=script.chars,
            billed_chars=0,
            outputs=[],
        )
        for position, script in enumerate(plan.scripts)
    ]
    session.add_all(scripts)
    session.flush()
    rows = [
        {
            "job_id": job_id,
            "script_pk": row.id,
            "index": segment.index,
            "source": segment.source,
            "text": segment.text,
            "pause_after_ms": segment.pause_after_ms,
            "inline_speed_alpha": list(segment.inline_speed_alpha),
            "cache_key": segment.cache_key,
            "chars": segment.chars,
            "state": State.PENDING,
            "attempts": 0,
            "billed_chars": 0,
        }
        for row, script in zip(scripts, plan.scripts, strict=True)
        for segment in script.segments
    ]
    if rows:
        session.execute(insert(SegmentRow), rows)
    return job_id


def _planned_segment(row: SegmentRow) -> PlannedSegment:
    return PlannedSegment(
        index=row.index,
        source=row.source,
        text=row.text,
        pause_after_ms=row.pause_after_ms,
        inline_speed_alpha=tuple(row.inline_speed_alpha),
        cache_key=row.cache_key,
    )


def _script_plan(row: ScriptRow, segments: list[SegmentRow]) -> ScriptPlan:
    return ScriptPlan(
        script_id=row.script_id,
        params=_from_dict(VoiceParams, row.params),
        output=_from_dict(OutputSpec, row.output),
        segments=tuple(_planned_segment(s) for s in segments),
        lead_pause_ms=row.lead_pause_ms,
    )


def _get_job(session: Session, job_id: str) -> JobRow:
    job = session.get(JobRow, job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    return job


def load_plan(session: Session, job_id: str) -> JobPlan:
    """Rebuild the job's plan from its rows, equal to the one recorded."""
    job = _get_job(session, job_id)
    scripts = session.scalars(
        select(ScriptRow).where(ScriptRow.job_id == job_id).order_by(ScriptRow.position)
    ).all()
    by_script: dict[int, list[SegmentRow]] = defaultdict(list)
    for segment in session.scalars(
        select(SegmentRow)
        .where(SegmentRow.job_id == job_id)
        .order_by(SegmentRow.script_pk, SegmentRow.index)
    ):
        by_script[segment.script_pk].append(segment)
    return JobPlan(
        name=job.name,
        manifest=job.manifest,
        destination=job.destination,
        scripts=tuple(_script_plan(s, by_script[s.id]) for s in scripts),
    )


@dataclass(frozen=True)
class SegmentWork:
    """What a worker needs to synthesize one segment, loaded by the segment's row id."""

    segment_pk: int
    job_id: str
    destination: str  # the job's: where the segment cache is
    script_pk: int
    script_id: str
    state: State
    attempts: int
    params: VoiceParams
    segment: PlannedSegment


@dataclass(frozen=True)
class ScriptWork:
    """What a worker needs to stitch one script, loaded by the script's row id."""

    script_pk: int
    job_id: str
    destination: str
    state: State
    plan: ScriptPlan


def load_segment(session: Session, segment_pk: int) -> SegmentWork:
    """The segment with its script's synthesis parameters and its job's destination."""
    found = session.execute(
        select(SegmentRow, ScriptRow, JobRow.destination)
        .join(ScriptRow, SegmentRow.script_pk == ScriptRow.id)
        .join(JobRow, SegmentRow.job_id == JobRow.id)
        .where(SegmentRow.id == segment_pk)
    ).one_or_none()
    if found is None:
        raise StoreError(f"no segment {segment_pk}")
    segment, script, destination = found
    return SegmentWork(
        segment_pk=segment.id,
        job_id=segment.job_id,
        destination=destination,
        script_pk=script.id,
        script_id=script.script_id,
        state=segment.state,
        attempts=segment.attempts,
        params=_from_dict(VoiceParams, script.params),
        segment=_planned_segment(segment),
    )


def load_script(session: Session, script_pk: int) -> ScriptWork:
    """The script's plan and its job's destination."""
    found = session.execute(
        select(ScriptRow, JobRow)
        .join(JobRow, ScriptRow.job_id == JobRow.id)
        .where(ScriptRow.id == script_pk)
    ).one_or_none()
    if found is None:
        raise StoreError(f"no script row {script_pk}")
    script, job = found
    segments = session.scalars(
        select(SegmentRow).where(SegmentRow.script_pk == script_pk).order_by(SegmentRow.index)
    ).all()
    return ScriptWork(
        script_pk=script.id,
        job_id=job.id,
        destination=job.destination,
        state=script.state,
        plan=_script_plan(script, list(segments)),
    )
