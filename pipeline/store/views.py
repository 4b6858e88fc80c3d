"""Read-only views of the job table: job lists, status summaries, work still to do."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, and_, case, exists, func, select, union_all
from sqlalchemy import false as sa_false

from pipeline.loudness import LoudnessRecord
from pipeline.options import JobOptions
from pipeline.store import executors
from pipeline.store.errors import JobNotFound, JobStillRunning
from pipeline.store.schema import BOOKS, JOBS, PRODUCTIONS, SCRIPTS, SEGMENTS, BookFile, OutputFile
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
    chars_done: int  # characters of the segments done
    attempts: int
    chars: int
    billed_chars: int
    audio_seconds: float | None
    outputs: tuple[OutputFile, ...]
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    loudness: LoudnessRecord | None = None  # measured when normalization is on
    warnings: tuple[str, ...] = ()

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
    # Running, but nothing runs it any more (its render was killed, no worker is alive).
    interrupted: bool = False
    options: JobOptions = field(default_factory=JobOptions)  # as it was asked for
    # Its release is the one its production has published now.
    published: bool = False

    @property
    def shown_state(self) -> str:
        """The state as a person should read it."""
        return "interrupted" if self.interrupted else self.state.value


@dataclass(frozen=True)
class BookStatus:
    """A job's book: where it stands, and once assembled its files and chapter times."""

    title: str
    state: State
    outputs: tuple[BookFile, ...]
    chapters: tuple[dict[str, object], ...]  # {script_id, title, start_seconds, ...}
    error: str | None


@dataclass(frozen=True)
class JobSummary:
    """A job and each of its scripts, for `status`."""

    job: JobStatus
    scripts: tuple[ScriptStatus, ...]
    book: BookStatus | None = None


@dataclass(frozen=True)
class SegmentRef:
    """A segment's row id and where it belongs, for an executor to schedule."""

    segment_pk: int
    script_pk: int
    script_id: str
    index: int
    state: State


def resolve_job_id(conn: Connection, text: str) -> str:
    """The job id the user meant: an exact id or a unique prefix of one."""
    wanted = text.strip().lower()
    if not wanted or not _HEX.fullmatch(wanted):
        raise JobNotFound(f"{text!r} is not a job id")
    if conn.scalar(select(JOBS.c.id).where(JOBS.c.id == wanted)) is not None:
        return wanted
    matches: list[str] = list(
        conn.scalars(
            select(JOBS.c.id).where(JOBS.c.id.startswith(wanted, autoescape=True)).limit(2)
        )
    )
    if not matches:
        raise JobNotFound(f"no job {text!r}")
    if len(matches) > 1:
        raise JobNotFound(f"{text!r} matches several jobs; give more characters")
    return matches[0]


def _job_rows(
    conn: Connection,
    *criteria: ColumnElement[bool],
    limit: int | None = None,
    offset: int = 0,
    dead_before: datetime | None = None,
) -> list[JobStatus]:
    totals = (
        select(
            SCRIPTS.c.job_id,
            func.count().label("scripts"),
            func.coalesce(func.sum(case((SCRIPTS.c.state == State.DONE, 1), else_=0)), 0).label(
                "done"
            ),
            func.coalesce(func.sum(SCRIPTS.c.chars), 0).label("chars"),
            func.coalesce(func.sum(SCRIPTS.c.billed_chars), 0).label("billed"),
            func.coalesce(func.sum(SCRIPTS.c.audio_seconds), 0.0).label("seconds"),
        )
        .group_by(SCRIPTS.c.job_id)
        .subquery()
    )
    interrupted = (
        and_(JOBS.c.state == State.RUNNING, ~executors.serving(dead_before))
        if dead_before is not None
        else sa_false()
    )
    published = (
        exists()
        .where(PRODUCTIONS.c.id == JOBS.c.production_id, PRODUCTIONS.c.published_job == JOBS.c.id)
        .label("published")
    )
    query = (
        select(JOBS, totals, interrupted.label("interrupted"), published)
        .outerjoin(totals, totals.c.job_id == JOBS.c.id)
        .where(*criteria)
        .order_by(JOBS.c.created_at.desc(), JOBS.c.id)
        .limit(limit)
        .offset(offset)
    )
    rows = [
        JobStatus(
            job_id=row["id"],
            name=row["name"],
            manifest=row["manifest"],
            destination=row["destination"],
            state=row["state"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=row["error"],
            scripts=int(row["scripts"] or 0),
            scripts_done=int(row["done"] or 0),
            chars=int(row["chars"] or 0),
            billed_chars=int(row["billed"] or 0),
            audio_seconds=float(row["seconds"] or 0.0),
            interrupted=bool(row["interrupted"]),
            options=JobOptions.from_json(row["options"]),
            published=bool(row["published"]),
        )
        for row in conn.execute(query).mappings()
    ]
    return rows if dead_before is None else _checked_here(conn, rows, dead_before)


def list_jobs(
    conn: Connection,
    *,
    limit: int = 20,
    offset: int = 0,
    state: State | None = None,
    dead_before: datetime | None = None,
) -> list[JobStatus]:
    """The newest jobs first (after the first `offset`), optionally only those in `state`.

    With `dead_before`, running jobs whose executor has not beaten since are `interrupted`.
    """
    criteria: list[ColumnElement[bool]] = [] if state is None else [JOBS.c.state == state]
    return _job_rows(conn, *criteria, limit=limit, offset=offset, dead_before=dead_before)


def _checked_here(conn: Connection, rows: list[JobStatus], since: datetime) -> list[JobStatus]:
    # The heartbeat says "alive" for up to the timeout after a kill; a render of this host
    # can be asked directly.
    return [
        replace(row, interrupted=True)
        if row.state is State.RUNNING
        and not row.interrupted
        and not executors.job_alive(conn, row.job_id, since)
        else row
        for row in rows
    ]


def check_not_running(conn: Connection, job_id: str, executor_timeout: float) -> None:
    """JobStillRunning when something still runs the job (a resume would do its work twice)."""
    since = executors.dead_before(executor_timeout)
    state = conn.scalar(select(JOBS.c.state).where(JOBS.c.id == job_id))
    if state == State.RUNNING and executors.job_alive(conn, job_id, since):
        raise JobStillRunning(
            f"job {job_id} is still running (its executor beat within the last "
            f"{executor_timeout:g} s); wait for it, `rime-batch cancel {job_id}`, "
            "or resume with --force"
        )


def job_summary(
    conn: Connection, job_id: str, *, dead_before: datetime | None = None
) -> JobSummary:
    """The job's totals and a line per script, in plan order (`dead_before`: see list_jobs)."""
    rows = _job_rows(conn, JOBS.c.id == job_id, dead_before=dead_before)
    if not rows:
        raise JobNotFound(f"no job {job_id!r}")
    counts = (
        select(
            SEGMENTS.c.script_pk,
            func.count().label("segments"),
            func.sum(case((SEGMENTS.c.state == State.DONE, 1), else_=0)).label("done"),
            func.sum(case((SEGMENTS.c.state == State.DONE, SEGMENTS.c.chars), else_=0)).label(
                "chars_done"
            ),
            func.sum(case((SEGMENTS.c.state == State.FAILED, 1), else_=0)).label("failed"),
            func.sum(SEGMENTS.c.attempts).label("attempts"),
        )
        .where(SEGMENTS.c.job_id == job_id)
        .group_by(SEGMENTS.c.script_pk)
        .subquery()
    )
    query = (
        select(SCRIPTS, counts)
        .outerjoin(counts, counts.c.script_pk == SCRIPTS.c.id)
        .where(SCRIPTS.c.job_id == job_id)
        .order_by(SCRIPTS.c.position)
    )
    scripts = tuple(
        ScriptStatus(
            script_pk=row["id"],
            script_id=row["script_id"],
            state=row["state"],
            segments=int(row["segments"] or 0),
            segments_done=int(row["done"] or 0),
            segments_failed=int(row["failed"] or 0),
            chars_done=int(row["chars_done"] or 0),
            attempts=int(row["attempts"] or 0),
            chars=row["chars"],
            billed_chars=row["billed_chars"],
            audio_seconds=row["audio_seconds"],
            outputs=tuple(OutputFile.from_json(o) for o in row["outputs"]),
            error=row["error"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            loudness=None if not row["loudness"] else LoudnessRecord(**row["loudness"]),
            warnings=tuple(row["warnings"] or ()),
        )
        for row in conn.execute(query).mappings()
    )
    return JobSummary(job=rows[0], scripts=scripts, book=book_status(conn, job_id))


def book_status(conn: Connection, job_id: str) -> BookStatus | None:
    """The job's book, or None when it has none."""
    row = conn.execute(
        select(BOOKS.c.spec, BOOKS.c.state, BOOKS.c.outputs, BOOKS.c.chapters, BOOKS.c.error).where(
            BOOKS.c.job_id == job_id
        )
    ).one_or_none()
    if row is None:
        return None
    return BookStatus(
        title=row.spec["title"],
        state=State(row.state),
        outputs=tuple(BookFile(**o) for o in row.outputs),
        chapters=tuple(row.chapters),
        error=row.error,
    )


def job_production(conn: Connection, job_id: str) -> int | None:
    """The production a job renders a release of (None for a job older than productions)."""
    return conn.execute(
        select(JOBS.c.production_id).where(JOBS.c.id == job_id)
    ).scalar_one_or_none()


def list_segments(
    conn: Connection, job_id: str, states: Collection[State] | None = None
) -> list[SegmentRef]:
    """The job's segments in plan order, optionally only those in `states`."""
    query = (
        select(
            SEGMENTS.c.id,
            SEGMENTS.c.script_pk,
            SCRIPTS.c.script_id,
            SEGMENTS.c.index,
            SEGMENTS.c.state,
        )
        .join(SCRIPTS, SEGMENTS.c.script_pk == SCRIPTS.c.id)
        .where(SEGMENTS.c.job_id == job_id)
        .order_by(SCRIPTS.c.position, SEGMENTS.c.index)
    )
    if states is not None:
        query = query.where(SEGMENTS.c.state.in_(list(states)))
    return [SegmentRef(*row) for row in conn.execute(query)]


def all_segments_done() -> ColumnElement[bool]:
    """Whether every segment of the script in the enclosing query is done: a stitch is due."""
    return ~exists().where(SEGMENTS.c.script_pk == SCRIPTS.c.id, SEGMENTS.c.state != State.DONE)


def stitchable_scripts(conn: Connection, job_id: str) -> list[int]:
    """Row ids of pending scripts whose segments are all done (a stitch claim is due)."""
    query = (
        select(SCRIPTS.c.id)
        .where(
            and_(SCRIPTS.c.job_id == job_id, SCRIPTS.c.state == State.PENDING), all_segments_done()
        )
        .order_by(SCRIPTS.c.position)
    )
    return list(conn.scalars(query))


@dataclass(frozen=True)
class Outstanding:
    """What a job still needs: its pending segments in plan order, and its due stitches."""

    segments: tuple[int, ...]
    stitches: tuple[int, ...]


def outstanding(conn: Connection, job_id: str) -> Outstanding:
    """The work an executor starting (or resuming, or sweeping) the job has to schedule."""
    pending = conn.scalars(
        select(SEGMENTS.c.id)
        .join(SCRIPTS, SEGMENTS.c.script_pk == SCRIPTS.c.id)
        .where(SEGMENTS.c.job_id == job_id, SEGMENTS.c.state == State.PENDING)
        .order_by(SCRIPTS.c.position, SEGMENTS.c.index)
    )
    return Outstanding(tuple(pending), tuple(stitchable_scripts(conn, job_id)))


def last_activity(conn: Connection, job_id: str) -> datetime | None:
    """When the job's work last moved: its latest claim or finish of a segment or a script, or
    the start of its book.

    A distributed executor cannot tell a dead worker from a slow one by asking it; it can only
    see how long ago the job table last changed.
    """
    moments = union_all(
        select(func.max(JOBS.c.started_at).label("at")).where(JOBS.c.id == job_id),
        select(func.max(SEGMENTS.c.started_at)).where(SEGMENTS.c.job_id == job_id),
        select(func.max(SEGMENTS.c.finished_at)).where(SEGMENTS.c.job_id == job_id),
        select(func.max(SCRIPTS.c.stitch_started_at)).where(SCRIPTS.c.job_id == job_id),
        select(func.max(SCRIPTS.c.finished_at)).where(SCRIPTS.c.job_id == job_id),
        select(func.max(BOOKS.c.started_at)).where(BOOKS.c.job_id == job_id),
    ).subquery()
    # max() keeps the column's type, so the value comes back timezone-aware on SQLite too.
    latest: datetime | None = conn.scalar(select(func.max(moments.c.at)))
    return latest
