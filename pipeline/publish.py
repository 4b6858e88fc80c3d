"""Publishing a release: the stable paths and the root `results.json` switch to one job's set.

A job writes its outputs under `releases/<job id>/`, never over the stable paths. Publishing it:

1. takes the production's row (one publish of a production at a time; PostgreSQL locks the
   row, SQLite's write lock is held anyway) and checks the job is done, not pruned, and not
   older than the release published now (a rollback says so explicitly);
2. puts each output at its stable path, `<script-id>.<ext>`, in one atomic step per file (a
   hard link renamed over it in a folder, a server-side copy on S3), and removes the stable
   files of scripts the new release does not have;
3. writes the root `results.json` last. It names the release, and every output's `uri` is the
   file in the release folder, which never changes: a reader that follows `results.json` sees
   the old set or the new one, never a mix. Its `published_uri` is the stable path;
4. records the release as published, then prunes releases beyond the job's `keep_releases`
   (never the published one, never an unfinished job's).

Every step can run again: a publish that stopped halfway leaves the old `results.json`, and
running it again (`resume`, `publish`) finishes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select

from pipeline.errors import InputError, RimeBatchError
from pipeline.notify import JobEvent, job_ended
from pipeline.options import JobOptions, Publish
from pipeline.results import results_bytes
from pipeline.storage import (
    RESULTS_KEY,
    ObjectStore,
    open_store,
    output_key,
    release_key,
)
from pipeline.store import State, productions, views
from pipeline.store.schema import JOBS

log = logging.getLogger(__name__)


# How a done job that was not published says why (on the job, shown by `status`).
NOT_PUBLISHED = "not published: "
PUBLISH_FAILED = "publish failed: "


class PublishRefused(InputError):
    """The release cannot be published: not done, pruned, or older than the published one."""


@dataclass(frozen=True)
class Published:
    """What a publish did."""

    production: str
    destination: str
    job_id: str
    previous: str | None  # the release published before
    outputs: int  # stable files written
    removed: int  # stable files of scripts the release does not have
    pruned: tuple[str, ...]  # releases whose files were deleted


def find_production(conn: Connection, name: str, destination: str | None) -> int:
    """The id of the production called `name` (at `destination`, when several have that name);
    InputError naming what is missing."""
    found = productions.find_productions(conn, name)
    if destination is not None:
        found = [p for p in found if p.destination == destination]
    if not found:
        where = f" at {destination}" if destination else ""
        raise InputError(f"no production {name!r}{where}: render a manifest with `job: {name}`")
    if len(found) > 1:
        places = ", ".join(p.destination for p in found)
        raise InputError(
            f"production {name!r} renders to several places ({places}): add --destination"
        )
    return found[0].id


def publish_release(
    db: Engine, name: str, release: str | None, destination: str | None, *, rollback: bool
) -> Published:
    """Publish release `release` (an id or prefix) of production `name`; a rollback without
    one publishes the release published before the current one."""
    with db.begin() as conn:
        production_id = find_production(conn, name, destination)
        if release is None:
            if not rollback:
                raise InputError("publish: name the release to publish")
            release = productions.previously_published(conn, production_id)
            if release is None:
                raise InputError(
                    f"production {name!r} has no earlier published release to roll back to"
                )
        job_id = views.resolve_job_id(conn, release)
        belongs = views.job_production(conn, job_id) == production_id
    if not belongs:
        raise PublishRefused(f"job {job_id} is not a release of production {name!r}")
    return publish(db, job_id, rollback=rollback)


def publish(
    db: Engine,
    job_id: str,
    *,
    rollback: bool = False,
    store_for: Callable[[str], ObjectStore] = open_store,
) -> Published:
    """Make `job_id`'s release the published set of its production (see the module's steps).

    `rollback` allows a release older than the published one.
    """
    with db.begin() as conn:
        production_id = _production_of(conn, job_id)
        production = productions.get_production(conn, production_id, lock=True)
        summary = views.job_summary(conn, job_id)
        job = summary.job
        if job.state is not State.DONE:
            raise PublishRefused(f"job {job_id} is {job.shown_state}: only a done job publishes")
        _check_not_pruned(conn, job_id)
        previous = production.published_job
        if previous is not None and previous != job_id and not rollback:
            _check_not_older(conn, job_id, previous)
        store = store_for(production.destination)
        stable = _publish_files(store, summary, _stable_keys(conn, previous))
        # The last write: from here on a reader that follows it sees the new set.
        store.put_bytes(
            RESULTS_KEY,
            results_bytes(
                summary,
                lambda sid, fmt: store.uri_for(output_key(sid, fmt)),
                published_key_uri=store.uri_for,
            ),
            content_type="application/json",
        )
        productions.mark_published(conn, production_id, job_id)
        # Its webhooks hear of it with the publish itself (a rollback's too).
        job_ended(conn, job_id, JobEvent.PUBLISHED)
    pruned = prune(db, production_id, keep=_options(db, job_id).keep_releases, store=store)
    was = f" (was {previous})" if previous and previous != job_id else ""
    gone = f"; pruned {len(pruned)} old releases" if pruned else ""
    log.info(
        "published release %s of %s%s: %d files at %s%s",
        job_id,
        production.name,
        was,
        stable.written,
        production.destination,
        gone,
    )
    return Published(
        production.name,
        production.destination,
        job_id,
        previous,
        stable.written,
        stable.removed,
        pruned,
    )


@dataclass(frozen=True)
class _Stable:
    written: int
    removed: int


def _publish_files(store: ObjectStore, summary: views.JobSummary, before: set[str]) -> _Stable:
    job_id = summary.job.job_id
    now: set[str] = set()
    for script in summary.scripts:
        for output in script.outputs:
            key = output_key(script.script_id, output.format)
            store.copy(release_key(job_id, key), key)
            now.add(key)
    # The book's files (a done job's book is assembled) are outputs like the scripts'.
    for file in summary.book.outputs if summary.book else ():
        store.copy(release_key(job_id, file.key), file.key)
        now.add(file.key)
    stale = sorted(before - now)
    for key in stale:
        store.delete(key)
    # Before results.json names the set: the renames must reach the disk first.
    store.sync(now | set(stale))
    return _Stable(len(now), len(stale))


def _stable_keys(conn: Connection, job_id: str | None) -> set[str]:
    """The stable keys a published job's release put in place."""
    if job_id is None:
        return set()
    summary = views.job_summary(conn, job_id)
    book = {f.key for f in summary.book.outputs} if summary.book else set()
    return {output_key(s.script_id, o.format) for s in summary.scripts for o in s.outputs} | book


def _production_of(conn: Connection, job_id: str) -> int:
    row = conn.execute(
        select(JOBS.c.production_id, JOBS.c.name, JOBS.c.destination).where(JOBS.c.id == job_id)
    ).one_or_none()
    if row is None:
        raise PublishRefused(f"no job {job_id!r}")
    if row.production_id is not None:
        return int(row.production_id)
    # A job recorded before productions existed: its production is found by name.
    return productions.ensure_production(conn, row.name, row.destination)


def _check_not_pruned(conn: Connection, job_id: str) -> None:
    pruned = conn.execute(select(JOBS.c.pruned_at).where(JOBS.c.id == job_id)).scalar_one()
    if pruned is not None:
        raise PublishRefused(f"the release of job {job_id} was pruned: its files are gone")


def _check_not_older(conn: Connection, job_id: str, published: str) -> None:
    created = dict(
        conn.execute(
            select(JOBS.c.id, JOBS.c.created_at).where(JOBS.c.id.in_([job_id, published]))
        ).all()
    )
    if created[job_id] < created[published]:
        raise PublishRefused(
            f"job {job_id} is older than the published release {published}; "
            f"`rime-batch rollback` publishes an older release on purpose"
        )


def publish_when_due(
    db: Engine, job_id: str, *, store_for: Callable[[str], ObjectStore] = open_store
) -> Published | None:
    """Publish a job that just ended done, unless it asks for a manual publish or was published
    already; a refusal or a storage error is recorded on the job (it stays done), not raised."""
    with db.begin() as conn:
        row = conn.execute(
            select(JOBS.c.state, JOBS.c.options, JOBS.c.published_at).where(JOBS.c.id == job_id)
        ).one()
    if (
        row.state is not State.DONE
        or row.published_at is not None
        or JobOptions.from_json(row.options).publish is not Publish.AUTO
    ):
        return None
    try:
        return publish(db, job_id, store_for=store_for)
    except PublishRefused as exc:
        why = f"{NOT_PUBLISHED}{exc}"
    except RimeBatchError as exc:
        why = f"{PUBLISH_FAILED}{exc}; `rime-batch resume {job_id}` publishes it"
    log.warning("release %s: %s", job_id, why)
    with db.begin() as conn:
        productions.note_unpublished(conn, job_id, why)
    return None


def publish_failed(error: str | None) -> bool:
    """Whether a done job's error says its publish went wrong (and should be run again), as
    opposed to being refused on purpose (an older release, a manual publish)."""
    return error is not None and error.startswith(PUBLISH_FAILED)


def _options(db: Engine, job_id: str) -> JobOptions:
    with db.begin() as conn:
        data = conn.execute(select(JOBS.c.options).where(JOBS.c.id == job_id)).scalar_one()
    return JobOptions.from_json(data)


def prune(db: Engine, production_id: int, *, keep: int, store: ObjectStore) -> tuple[str, ...]:
    """Delete the files of the production's releases beyond the newest `keep` (never the
    published one, never an unfinished job's); the pruned job ids."""
    with db.begin() as conn:
        production = productions.get_production(conn, production_id, lock=True)
        candidates = [
            r
            for r in productions.releases(conn, production_id)
            if r.pruned_at is None and r.state not in (State.PENDING, State.RUNNING)
        ]
        kept = {r.job_id for r in candidates[: max(keep, 1)]} | {production.published_job}
        doomed = [r.job_id for r in candidates if r.job_id not in kept]
        for job_id in doomed:
            for key in list(store.list_keys(release_key(job_id))):
                store.delete(key)
        productions.mark_pruned(conn, doomed)
    return tuple(doomed)
