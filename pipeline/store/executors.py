"""Executors: the processes that claim work, and how the job table tells a live one from a dead one.

A `render` (or `resume`) and each worker process register a row and beat its `heartbeat_at`
while they run. Every claim of a segment or a stitch names its executor, so a claim is alive
exactly while its executor's heartbeat is fresh: a row can say who holds it without Redis, and
an outage of Redis cannot make two holders. A claim whose executor stopped beating (killed,
frozen, its host lost) may be taken over; a job whose executor is gone shows as interrupted.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, case, delete, exists, insert, select, update

from pipeline.store.schema import EXECUTORS, JOBS, SCRIPTS, SEGMENTS, utcnow
from pipeline.store.states import State

RENDER = "render"
WORKER = "worker"


def register(conn: Connection, executor_id: str, kind: str) -> None:
    """Add this process as an executor, beating from now."""
    now = utcnow()
    conn.execute(
        insert(EXECUTORS).values(
            id=executor_id,
            kind=kind,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=now,
            heartbeat_at=now,
        )
    )


def beat(conn: Connection, executor_id: str) -> bool:
    """Refresh the executor's heartbeat; False when its row is gone (it was presumed dead)."""
    result = conn.execute(
        update(EXECUTORS).where(EXECUTORS.c.id == executor_id).values(heartbeat_at=utcnow())
    )
    return bool(getattr(result, "rowcount", 0))


def unregister(conn: Connection, executor_id: str) -> None:
    """Remove the executor (a clean stop): its claims, if any are left, are dead at once."""
    conn.execute(delete(EXECUTORS).where(EXECUTORS.c.id == executor_id))


def dead_before(timeout: float) -> datetime:
    """The heartbeat older than which an executor counts as gone."""
    return utcnow() - timedelta(seconds=timeout)


def alive(executor: ColumnElement[str | None], since: datetime) -> ColumnElement[bool]:
    """True where `executor` names an executor that has beaten since `since`."""
    return exists().where(EXECUTORS.c.id == executor, EXECUTORS.c.heartbeat_at >= since)


def live_claims(conn: Connection, claims: Collection[str]) -> set[str]:
    """Which of these claim tokens still hold a running segment or stitch."""
    if not claims:
        return set()
    listed = list(claims)
    found: set[str] = set()
    for table in (SEGMENTS, SCRIPTS):
        rows = conn.execute(
            select(table.c.claim).where(table.c.claim.in_(listed), table.c.state == State.RUNNING)
        )
        found.update(row[0] for row in rows)
    return found


def serving(since: datetime) -> ColumnElement[bool]:
    """True for a job row that something runs: its render process, or (a submitted job, whose
    `executor` is None) any worker, all alive since `since`."""
    any_worker = exists().where(EXECUTORS.c.kind == WORKER, EXECUTORS.c.heartbeat_at >= since)
    return case((JOBS.c.executor.is_not(None), alive(JOBS.c.executor, since)), else_=any_worker)


def job_alive(conn: Connection, job_id: str, since: datetime) -> bool:
    """Whether something runs the job (see `serving`), and its render, if it ran on this host,
    is still a process here: a render killed a moment ago is known dead at once."""
    if not conn.scalar(select(serving(since)).where(JOBS.c.id == job_id)):
        return False
    found = conn.execute(
        select(EXECUTORS.c.host, EXECUTORS.c.pid)
        .join(JOBS, JOBS.c.executor == EXECUTORS.c.id)
        .where(JOBS.c.id == job_id)
    ).one_or_none()
    return found is None or not gone_here(found.host, found.pid)


def gone_here(host: str, pid: int) -> bool:
    """True when (host, pid) is a process of this host that no longer exists."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, run by someone else
    return False
