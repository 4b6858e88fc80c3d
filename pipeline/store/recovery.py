"""Finding work whose worker died: stale stitching claims, and jobs that stopped moving.

A distributed executor cannot tell a dead worker from a slow one by asking it; it can only see
how long ago the job table last changed. These functions give it that view, in the same
compare-and-set style as `pipeline.store.repo`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session

from pipeline.store.models import Job, Script, Segment, utcnow
from pipeline.store.repo import _cas
from pipeline.store.states import State


def requeue_stale_stitches(
    session: Session, *, older_than: timedelta, job_id: str | None = None
) -> int:
    """Scripts whose stitching was claimed longer ago than `older_than` -> pending; the count."""
    cutoff: datetime = utcnow() - older_than
    row = Script.stitch_started_at < cutoff
    if job_id is not None:
        row = row & (Script.job_id == job_id)
    return _cas(
        session,
        Script,
        row,
        expected=[State.RUNNING],
        target=State.PENDING,
        stitch_started_at=None,
    )


def last_activity(session: Session, job_id: str) -> datetime | None:
    """When the job's work last moved: its latest claim or finish of a segment or a script."""
    moments = union_all(
        select(func.max(Job.started_at).label("at")).where(Job.id == job_id),
        select(func.max(Segment.started_at)).where(Segment.job_id == job_id),
        select(func.max(Segment.finished_at)).where(Segment.job_id == job_id),
        select(func.max(Script.stitch_started_at)).where(Script.job_id == job_id),
        select(func.max(Script.finished_at)).where(Script.job_id == job_id),
    ).subquery()
    # max() keeps the column's type, so the value comes back timezone-aware on SQLite too.
    latest: datetime | None = session.scalar(select(func.max(moments.c.at)))
    return latest
