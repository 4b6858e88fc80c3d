"""Handoffs that need two transactions: a finish, then the claim it may unlock.

A worker that finishes the last segment of a script must commit that finish before it asks
whether the script is ready to stitch: in one transaction, two workers finishing the last two
segments together each see the other's segment still running, and the script is never
stitched. The same holds for the last scripts of a job and the job's rollup. These functions
take a sessionmaker so they can commit in between.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.store.models import OutputFile, Script, Segment
from pipeline.store.repo import claim_stitch, finish_script, finish_segment, settle_job
from pipeline.store.states import State


def finish_segment_and_claim_stitch(
    sessions: sessionmaker[Session], segment_id: int, *, audio_seconds: float
) -> int | None:
    """Finish the segment; the script's row id if this caller now owns its stitching."""
    with sessions.begin() as session:
        if not finish_segment(session, segment_id, audio_seconds=audio_seconds):
            return None
        script_pk = session.scalars(select(Segment.script_pk).where(Segment.id == segment_id)).one()
    with sessions.begin() as session:
        return script_pk if claim_stitch(session, script_pk) else None


def finish_script_and_settle_job(
    sessions: sessionmaker[Session],
    script_pk: int,
    *,
    audio_seconds: float,
    outputs: Sequence[OutputFile],
) -> State | None:
    """Record the stitched script, then roll its job up; the job's state, None if lost."""
    with sessions.begin() as session:
        if not finish_script(session, script_pk, audio_seconds=audio_seconds, outputs=outputs):
            return None
        job_id = session.scalars(select(Script.job_id).where(Script.id == script_pk)).one()
    with sessions.begin() as session:
        return settle_job(session, job_id)
