"""A JobPlan into rows and back: record_plan writes it, load_plan rebuilds it exactly."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar, get_origin, get_type_hints

from sqlalchemy import Connection, RowMapping, Select, bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from pipeline.options import JobOptions
from pipeline.plan import BookPlan, JobPlan, OutputSpec, PlannedSegment, ScriptPlan
from pipeline.rime.params import VoiceParams
from pipeline.store import productions
from pipeline.store.errors import JobNotFound, StoreError
from pipeline.store.schema import BOOKS, JOBS, SCRIPTS, SEGMENTS, utcnow
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


def record_plan(conn: Connection, plan: JobPlan) -> str:
    """Write a job with its scripts and segments, all pending; returns the new job id.

    `ProductionBusy` when another job of the same production (name and destination) is
    unfinished.
    """
    job_id = new_job_id()
    production_id = productions.ensure_production(conn, plan.name, plan.destination)
    productions.guard_unique(conn, production_id, None)
    try:
        # A savepoint: on PostgreSQL a refused statement would abort the whole transaction.
        with conn.begin_nested():
            conn.execute(
                insert(JOBS).values(
                    id=job_id,
                    name=plan.name,
                    manifest=plan.manifest,
                    destination=plan.destination,
                    state=State.PENDING,
                    created_at=utcnow(),
                    production_id=production_id,
                    options=plan.options.to_json(),
                )
            )
    except IntegrityError as exc:
        raise productions.translate_busy(conn, production_id, exc) from exc
    if plan.book is not None:
        conn.execute(
            insert(BOOKS).values(
                job_id=job_id,
                state=State.PENDING,
                spec=plan.book.to_json(),
                cover=plan.book.cover,
                outputs=[],
                chapters=[],
            )
        )
    if not plan.scripts:
        return job_id
    script_rows = [
        {
            "job_id": job_id,
            "position": position,
            "script_id": script.script_id,
            "state": State.PENDING,
            "params": asdict(script.params),
            "output": asdict(script.output),
            "lead_pause_ms": script.lead_pause_ms,
            "chars": script.chars,
            "billed_chars": 0,
            "outputs": [],
        }
        for position, script in enumerate(plan.scripts)
    ]
    script_pks = conn.execute(
        insert(SCRIPTS).returning(SCRIPTS.c.id, sort_by_parameter_order=True), script_rows
    ).scalars()
    rows = [
        {
            "job_id": job_id,
            "script_pk": script_pk,
            "index": segment.index,
            "source": segment.source,
            "text": segment.text,
            "pause_after_ms": segment.pause_after_ms,
            "inline_speed_alpha": list(segment.inline_speed_alpha),
            "cache_key": segment.cache_key,
            "phonemes": segment.phonemes,
            "chars": segment.chars,
            "state": State.PENDING,
            "attempts": 0,
            "billed_chars": 0,
        }
        for script_pk, script in zip(list(script_pks), plan.scripts, strict=True)
        for segment in script.segments
    ]
    if rows:
        conn.execute(insert(SEGMENTS), rows)
    return job_id


_PLANNED_COLUMNS = (
    "index",
    "source",
    "text",
    "pause_after_ms",
    "inline_speed_alpha",
    "cache_key",
    "phonemes",
)


def _planned_segment(row: RowMapping) -> PlannedSegment:
    return PlannedSegment(
        index=row["index"],
        source=row["source"],
        text=row["text"],
        pause_after_ms=row["pause_after_ms"],
        inline_speed_alpha=tuple(row["inline_speed_alpha"]),
        cache_key=row["cache_key"],
        phonemes=row["phonemes"],
    )


def _script_plan(row: RowMapping, segments: Sequence[RowMapping]) -> ScriptPlan:
    return ScriptPlan(
        script_id=row["script_id"],
        params=_from_dict(VoiceParams, row["params"]),
        output=_from_dict(OutputSpec, row["output"]),
        segments=tuple(_planned_segment(s) for s in segments),
        lead_pause_ms=row["lead_pause_ms"],
    )


def load_plan(conn: Connection, job_id: str) -> JobPlan:
    """Rebuild the job's plan from its rows, equal to the one recorded."""
    job = conn.execute(select(JOBS).where(JOBS.c.id == job_id)).mappings().one_or_none()
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    scripts = conn.execute(
        select(SCRIPTS).where(SCRIPTS.c.job_id == job_id).order_by(SCRIPTS.c.position)
    ).mappings()
    by_script: dict[int, list[RowMapping]] = defaultdict(list)
    for segment in conn.execute(
        select(SEGMENTS)
        .where(SEGMENTS.c.job_id == job_id)
        .order_by(SEGMENTS.c.script_pk, SEGMENTS.c.index)
    ).mappings():
        by_script[segment["script_pk"]].append(segment)
    return JobPlan(
        name=job["name"],
        manifest=job["manifest"],
        destination=job["destination"],
        scripts=tuple(_script_plan(s, by_script[s["id"]]) for s in scripts),
        options=JobOptions.from_json(job["options"]),
        book=load_book(conn, job_id),
    )


def load_book(conn: Connection, job_id: str) -> BookPlan | None:
    """The job's book as planned, cover included; None for a job without one."""
    row = conn.execute(
        select(BOOKS.c.spec, BOOKS.c.cover).where(BOOKS.c.job_id == job_id)
    ).one_or_none()
    return None if row is None else BookPlan.from_json(row.spec, row.cover)


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
    params: VoiceParams  # the segment's own: its script's, with any it needs (request_params)
    segment: PlannedSegment
    no_cache: bool = False  # the job asked for fresh synthesis: the cache is not read
    timed: bool = False  # its script asks for captions: its words need timestamps


@dataclass(frozen=True)
class ScriptWork:
    """What a worker needs to stitch one script, loaded by the script's row id."""

    script_pk: int
    job_id: str
    destination: str
    state: State
    plan: ScriptPlan


# What a stage loads for every segment and script, built once (see pipeline.store.transitions).
JOBS, SCRIPTS, SEGMENTS = JOBS, SCRIPTS, SEGMENTS
_SEGMENT_COLUMNS = [SEGMENTS.c[name] for name in _PLANNED_COLUMNS]
_SEGMENTS_WORK = select(
    SEGMENTS.c.id,
    SEGMENTS.c.job_id,
    JOBS.c.destination,
    JOBS.c.options,
    SEGMENTS.c.script_pk,
    SCRIPTS.c.script_id,
    SEGMENTS.c.state,
    SEGMENTS.c.attempts,
    SCRIPTS.c.params,
    SCRIPTS.c.output,
    *_SEGMENT_COLUMNS,
).select_from(
    SEGMENTS.join(SCRIPTS, SEGMENTS.c.script_pk == SCRIPTS.c.id).join(
        JOBS, SEGMENTS.c.job_id == JOBS.c.id
    )
)
_SEGMENT_WORK = _SEGMENTS_WORK.where(SEGMENTS.c.id == bindparam("pk_"))
_SOME_WORK = _SEGMENTS_WORK.where(SEGMENTS.c.id.in_(bindparam("pks_", expanding=True)))
_PENDING_WORK = _SEGMENTS_WORK.where(
    SEGMENTS.c.job_id == bindparam("job_"), SEGMENTS.c.state == State.PENDING
).order_by(SCRIPTS.c.position, SEGMENTS.c.index)
_SCRIPT_WORK = (
    select(SCRIPTS, JOBS.c.destination)
    .select_from(SCRIPTS.join(JOBS, SCRIPTS.c.job_id == JOBS.c.id))
    .where(SCRIPTS.c.id == bindparam("pk_"))
)
_SCRIPT_SEGMENTS = (
    select(*_SEGMENT_COLUMNS)
    .where(SEGMENTS.c.script_pk == bindparam("pk_"))
    .order_by(SEGMENTS.c.index)
)


def load_segment(conn: Connection, segment_pk: int) -> SegmentWork:
    """The segment with its script's synthesis parameters and its job's destination."""
    found = conn.execute(_SEGMENT_WORK, {"pk_": segment_pk}).mappings().one_or_none()
    if found is None:
        raise StoreError(f"no segment {segment_pk}")
    return _segment_work(found, _from_dict(VoiceParams, found["params"]))


def load_segments(conn: Connection, segment_pks: Sequence[int]) -> list[SegmentWork]:
    """These segments, each as `load_segment` gives it, in the order asked; a segment with no
    row (its job deleted) is left out."""
    found = {work.segment_pk: work for work in _works(conn, _SOME_WORK, pks_=list(segment_pks))}
    return [found[pk] for pk in segment_pks if pk in found]


def load_pending_segments(conn: Connection, job_id: str) -> list[SegmentWork]:
    """The job's pending segments, each as `load_segment` gives it, in plan order."""
    return _works(conn, _PENDING_WORK, job_=job_id)


def _works(conn: Connection, statement: Select[Any], **values: Any) -> list[SegmentWork]:
    # A script's parameters are parsed once, however many of its segments come.
    params: dict[int, VoiceParams] = {}
    work = []
    for found in conn.execute(statement, values).mappings():
        script_pk = found["script_pk"]
        if script_pk not in params:
            params[script_pk] = _from_dict(VoiceParams, found["params"])
        work.append(_segment_work(found, params[script_pk]))
    return work


def _segment_work(found: RowMapping, params: VoiceParams) -> SegmentWork:
    segment = _planned_segment(found)
    return SegmentWork(
        segment_pk=found["id"],
        job_id=found["job_id"],
        destination=found["destination"],
        script_pk=found["script_pk"],
        script_id=found["script_id"],
        state=found["state"],
        attempts=found["attempts"],
        params=segment.request_params(params),
        segment=segment,
        no_cache=bool((found["options"] or {}).get("no_cache", False)),
        timed=bool((found["output"] or {}).get("captions")),
    )


def load_script(conn: Connection, script_pk: int) -> ScriptWork:
    """The script's plan and its job's destination."""
    found = conn.execute(_SCRIPT_WORK, {"pk_": script_pk}).mappings().one_or_none()
    if found is None:
        raise StoreError(f"no script row {script_pk}")
    segments = conn.execute(_SCRIPT_SEGMENTS, {"pk_": script_pk}).mappings().all()
    return ScriptWork(
        script_pk=script_pk,
        job_id=found["job_id"],
        destination=found["destination"],
        state=found["state"],
        plan=_script_plan(found, segments),
    )


@dataclass(frozen=True)
class BookWork:
    """What an executor needs to assemble a job's book: the book, its job's destination, and
    each chapter's output settings."""

    job_id: str
    destination: str
    book: BookPlan
    outputs: Mapping[str, OutputSpec]  # by script id


def load_book_work(conn: Connection, job_id: str) -> BookWork:
    """The job's book with what assembling it needs; StoreError when the job has none."""
    book = load_book(conn, job_id)
    if book is None:
        raise StoreError(f"job {job_id} has no book")
    destination = conn.execute(select(JOBS.c.destination).where(JOBS.c.id == job_id)).scalar_one()
    outputs = {
        row.script_id: _from_dict(OutputSpec, row.output)
        for row in conn.execute(
            select(SCRIPTS.c.script_id, SCRIPTS.c.output).where(SCRIPTS.c.job_id == job_id)
        )
    }
    return BookWork(job_id, destination, book, outputs)
