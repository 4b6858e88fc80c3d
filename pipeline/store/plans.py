"""A JobPlan into rows and back: record_plan writes it, load_plan rebuilds it exactly."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar, get_origin, get_type_hints

from sqlalchemy import RowMapping, bindparam, insert, select
from sqlalchemy.orm import Session

from pipeline.plan import JobPlan, OutputSpec, PlannedSegment, ScriptPlan
from pipeline.rime.params import VoiceParams
from pipeline.store.errors import JobNotFound, StoreError
from pipeline.store.schema import JOBS, SCRIPTS, SEGMENTS, JobRow, ScriptRow, SegmentRow, utcnow
from pipeline.store.states import State

T = TypeVar("T")


def new_job_id() -> str:
    """A fresh job id: 12 hex characters."""
    return uuid.uuid4().hex[:12]


_FIELDS: dict[type[Any], tuple[tuple[str, bool], ...]] = {}


def _fields_of(cls: type[Any]) -> tuple[tuple[str, bool], ...]:
    """Each field's name, and whether it is a tuple (read once: type hints are slow to get)."""
    if cls not in _FIELDS:
        hints = get_type_hints(cls)
        _FIELDS[cls] = tuple((f.name, get_origin(hints[f.name]) is tuple) for f in fields(cls))
    return _FIELDS[cls]


def _from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    # JSON has no tuples; fields typed as tuples come back as lists. Keys a later version of the
    # dataclass no longer has are dropped, and fields it added keep their defaults.
    kwargs: dict[str, Any] = {}
    for name, is_tuple in _fields_of(cls):
        if name not in data:
            continue
        value = data[name]
        kwargs[name] = tuple(value) if is_tuple and value is not None else value
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


_PLANNED_COLUMNS = (
    "index",
    "source",
    "text",
    "pause_after_ms",
    "inline_speed_alpha",
    "cache_key",
)


def _planned_segment(row: SegmentRow | RowMapping) -> PlannedSegment:
    get = row.__getitem__ if isinstance(row, RowMapping) else row.__getattribute__
    return PlannedSegment(
        index=get("index"),
        source=get("source"),
        text=get("text"),
        pause_after_ms=get("pause_after_ms"),
        inline_speed_alpha=tuple(get("inline_speed_alpha")),
        cache_key=get("cache_key"),
    )


def _script_plan(
    row: ScriptRow | RowMapping, segments: Sequence[SegmentRow | RowMapping]
) -> ScriptPlan:
    get = row.__getitem__ if isinstance(row, RowMapping) else row.__getattribute__
    return ScriptPlan(
        script_id=get("script_id"),
        params=_from_dict(VoiceParams, get("params")),
        output=_from_dict(OutputSpec, get("output")),
        segments=tuple(_planned_segment(s) for s in segments),
        lead_pause_ms=get("lead_pause_ms"),
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


# What a stage loads for every segment and script, built once (see pipeline.store.transitions).
_JOBS, _SCRIPTS, _SEGMENTS = JOBS, SCRIPTS, SEGMENTS
_SEGMENT_COLUMNS = [_SEGMENTS.c[name] for name in _PLANNED_COLUMNS]
_SEGMENT_WORK = (
    select(
        _SEGMENTS.c.job_id,
        _JOBS.c.destination,
        _SEGMENTS.c.script_pk,
        _SCRIPTS.c.script_id,
        _SEGMENTS.c.state,
        _SEGMENTS.c.attempts,
        _SCRIPTS.c.params,
        *_SEGMENT_COLUMNS,
    )
    .select_from(
        _SEGMENTS.join(_SCRIPTS, _SEGMENTS.c.script_pk == _SCRIPTS.c.id).join(
            _JOBS, _SEGMENTS.c.job_id == _JOBS.c.id
        )
    )
    .where(_SEGMENTS.c.id == bindparam("pk_"))
)
_SCRIPT_WORK = (
    select(_SCRIPTS, _JOBS.c.destination)
    .select_from(_SCRIPTS.join(_JOBS, _SCRIPTS.c.job_id == _JOBS.c.id))
    .where(_SCRIPTS.c.id == bindparam("pk_"))
)
_SCRIPT_SEGMENTS = (
    select(*_SEGMENT_COLUMNS)
    .where(_SEGMENTS.c.script_pk == bindparam("pk_"))
    .order_by(_SEGMENTS.c.index)
)


def load_segment(session: Session, segment_pk: int) -> SegmentWork:
    """The segment with its script's synthesis parameters and its job's destination."""
    found = session.execute(_SEGMENT_WORK, {"pk_": segment_pk}).mappings().one_or_none()
    if found is None:
        raise StoreError(f"no segment {segment_pk}")
    return SegmentWork(
        segment_pk=segment_pk,
        job_id=found["job_id"],
        destination=found["destination"],
        script_pk=found["script_pk"],
        script_id=found["script_id"],
        state=found["state"],
        attempts=found["attempts"],
        params=_from_dict(VoiceParams, found["params"]),
        segment=_planned_segment(found),
    )


def load_script(session: Session, script_pk: int) -> ScriptWork:
    """The script's plan and its job's destination."""
    found = session.execute(_SCRIPT_WORK, {"pk_": script_pk}).mappings().one_or_none()
    if found is None:
        raise StoreError(f"no script row {script_pk}")
    segments = session.execute(_SCRIPT_SEGMENTS, {"pk_": script_pk}).mappings().all()
    return ScriptWork(
        script_pk=script_pk,
        job_id=found["job_id"],
        destination=found["destination"],
        state=found["state"],
        plan=_script_plan(found, segments),
    )
