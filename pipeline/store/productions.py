"""Productions and their releases in the job table.

A production is a manifest's job name at its destination. Every job of it renders a release
(its outputs under `releases/<job id>/`); the production records which release is published.
At most one job of a production is unfinished (pending or running) at a time: a unique partial
index holds that, so two renders racing on two hosts cannot both start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from pipeline.errors import InputError
from pipeline.store.errors import StoreError
from pipeline.store.schema import JOBS, PRODUCTIONS, SCRIPTS, utcnow
from pipeline.store.states import State

_UNFINISHED = (State.PENDING, State.RUNNING)


class ProductionBusy(StoreError, InputError):
    """Another job of the production is unfinished: one production renders at a time."""


@dataclass(frozen=True)
class Production:
    """A job name at a destination, and its published release."""

    id: int
    name: str
    destination: str
    published_job: str | None
    published_at: datetime | None


@dataclass(frozen=True)
class Release:
    """One job of a production, as `releases NAME` lists it."""

    job_id: str
    state: State
    created_at: datetime
    finished_at: datetime | None
    published_at: datetime | None
    pruned_at: datetime | None
    scripts: int
    billed_chars: int
    voices: tuple[str, ...]  # "speaker/model" of its scripts, distinct, in order
    published: bool  # the production's published release now


def ensure_production(conn: Connection, name: str, destination: str) -> int:
    """The id of the production `name` at `destination`, created on first use."""
    found = find(conn, name, destination)
    if found is not None:
        return found
    try:
        # A savepoint: a second creator racing this one leaves our transaction usable.
        with conn.begin_nested():
            conn.execute(
                insert(PRODUCTIONS).values(name=name, destination=destination, created_at=utcnow())
            )
    except IntegrityError:
        pass
    found = find(conn, name, destination)
    assert found is not None, "the production was just created"
    return found


def find(conn: Connection, name: str, destination: str) -> int | None:
    """The id of the production `name` at `destination`, if it was ever rendered."""
    return conn.execute(
        select(PRODUCTIONS.c.id).where(
            PRODUCTIONS.c.name == name, PRODUCTIONS.c.destination == destination
        )
    ).scalar_one_or_none()


def get_production(conn: Connection, production_id: int, *, lock: bool = False) -> Production:
    """The production row; `lock` holds it (PostgreSQL: FOR UPDATE) until the transaction ends."""
    query = select(PRODUCTIONS).where(PRODUCTIONS.c.id == production_id)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).mappings().one()
    return Production(
        row["id"], row["name"], row["destination"], row["published_job"], row["published_at"]
    )


def find_productions(conn: Connection, name: str) -> list[Production]:
    """Every production called `name` (one per destination)."""
    ids = conn.execute(
        select(PRODUCTIONS.c.id).where(PRODUCTIONS.c.name == name).order_by(PRODUCTIONS.c.id)
    ).scalars()
    return [get_production(conn, pk) for pk in ids]


def unfinished_job(
    conn: Connection, production_id: int, *, other_than: str | None = None
) -> str | None:
    """The production's pending or running job, if any (besides `other_than`)."""
    query = select(JOBS.c.id).where(
        JOBS.c.production_id == production_id, JOBS.c.state.in_(_UNFINISHED)
    )
    if other_than is not None:
        query = query.where(JOBS.c.id != other_than)
    return conn.execute(query.limit(1)).scalar_one_or_none()


def busy_error(conn: Connection, production_id: int, job_id: str) -> ProductionBusy:
    """The one message for a production that already has an unfinished job."""
    production = get_production(conn, production_id)
    return ProductionBusy(
        f"production {production.name!r} at {production.destination} is already being "
        f"rendered by job {job_id}; wait for it, `rime-batch resume {job_id}` it if it was "
        f"interrupted, or `rime-batch cancel {job_id}`"
    )


def guard_unique(conn: Connection, production_id: int, job_id: str | None) -> None:
    """Raise ProductionBusy when a job of the production other than `job_id` is unfinished."""
    other = unfinished_job(conn, production_id, other_than=job_id)
    if other is not None:
        raise busy_error(conn, production_id, other)


def refuse_if_busy(
    conn: Connection, name: str, destination: str, *, job_id: str | None = None
) -> None:
    """`guard_unique` by name, before anything is recorded or sent (a preflight bills)."""
    found = find(conn, name, destination)
    if found is not None:
        guard_unique(conn, found, job_id)


def translate_busy(conn: Connection, production_id: int, exc: IntegrityError) -> StoreError:
    """What the unique index's refusal means: a racer started a job of the production first."""
    other = unfinished_job(conn, production_id)
    if other is None:
        return StoreError(f"the job table refused the change: {exc.orig}")
    return busy_error(conn, production_id, other)


def mark_published(conn: Connection, production_id: int, job_id: str) -> None:
    """Record `job_id`'s release as the production's published one."""
    now = utcnow()
    conn.execute(
        update(PRODUCTIONS)
        .where(PRODUCTIONS.c.id == production_id)
        .values(published_job=job_id, published_at=now)
    )
    conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(published_at=now, error=None))


def is_published(conn: Connection, job_id: str) -> bool:
    """Whether the job's release is its production's published one now."""
    found = conn.execute(
        select(PRODUCTIONS.c.id)
        .join(JOBS, JOBS.c.production_id == PRODUCTIONS.c.id)
        .where(JOBS.c.id == job_id, PRODUCTIONS.c.published_job == job_id)
    ).first()
    return found is not None


def previously_published(conn: Connection, production_id: int) -> str | None:
    """The release published most recently before the current one, if it still has its files."""
    production = get_production(conn, production_id)
    return conn.execute(
        select(JOBS.c.id)
        .where(
            JOBS.c.production_id == production_id,
            JOBS.c.published_at.is_not(None),
            JOBS.c.pruned_at.is_(None),
            JOBS.c.id != (production.published_job or ""),
        )
        .order_by(JOBS.c.published_at.desc())
        .limit(1)
    ).scalar_one_or_none()


def note_unpublished(conn: Connection, job_id: str, why: str) -> None:
    """Record on a done job why its release was not published (it stays done)."""
    conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(error=why))


def mark_pruned(conn: Connection, job_ids: Sequence[str]) -> None:
    """Record that these jobs' release files were deleted."""
    if job_ids:
        conn.execute(update(JOBS).where(JOBS.c.id.in_(job_ids)).values(pruned_at=utcnow()))


def releases(conn: Connection, production_id: int) -> list[Release]:
    """The production's jobs, newest first."""
    production = get_production(conn, production_id)
    jobs = conn.execute(
        select(JOBS)
        .where(JOBS.c.production_id == production_id)
        .order_by(JOBS.c.created_at.desc(), JOBS.c.id)
    ).mappings()
    listed = []
    for job in jobs:
        counts = conn.execute(
            select(func.count(), func.coalesce(func.sum(SCRIPTS.c.billed_chars), 0)).where(
                SCRIPTS.c.job_id == job["id"]
            )
        ).one()
        voices: dict[str, None] = {}
        for params in conn.execute(
            select(SCRIPTS.c.params)
            .where(SCRIPTS.c.job_id == job["id"])
            .order_by(SCRIPTS.c.position)
        ).scalars():
            voices[f"{params.get('speaker')}/{params.get('model_id')}"] = None
        listed.append(
            Release(
                job_id=job["id"],
                state=job["state"],
                created_at=job["created_at"],
                finished_at=job["finished_at"],
                published_at=job["published_at"],
                pruned_at=job["pruned_at"],
                scripts=counts[0],
                billed_chars=int(counts[1]),
                voices=tuple(voices),
                published=job["id"] == production.published_job,
            )
        )
    return listed
