"""Finding dead workers' work in the job table, on real SQLite and real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.manifest import load_manifest
from pipeline.plan import build_plan
from pipeline.store import State, create_engine_for, migrate, record_plan, session_factory
from pipeline.store.schema import ScriptRow, utcnow
from pipeline.store.transitions import (
    claim_segment,
    claim_stitch,
    finish_segment,
    requeue_stale_stitches,
)
from pipeline.store.views import last_activity, list_segments
from tests.fixtures.celery_workers import write_manifest


@pytest.fixture
def sessions(database_url: str) -> sessionmaker[Session]:
    migrate(database_url)
    return session_factory(create_engine_for(database_url))


def _job(sessions: sessionmaker[Session], folder: Path) -> str:
    plan = build_plan(load_manifest(write_manifest(folder, scripts=2, lines=2)))
    with sessions.begin() as session:
        return record_plan(session, plan)


def _stitching(sessions: sessionmaker[Session], job_id: str) -> list[int]:
    """Finish every segment of the job and claim both stitches; the scripts' row ids."""
    with sessions.begin() as session:
        refs = list_segments(session, job_id)
    for ref in refs:
        with sessions.begin() as session:
            assert claim_segment(session, ref.segment_pk)
            assert finish_segment(session, ref.segment_pk, audio_seconds=1.0) is not None
    scripts = sorted({ref.script_pk for ref in refs})
    for script_pk in scripts:
        with sessions.begin() as session:
            assert claim_stitch(session, script_pk)
    return scripts


def _state(sessions: sessionmaker[Session], script_pk: int) -> State:
    with sessions.begin() as session:
        script = session.get(ScriptRow, script_pk)
        assert script is not None
        return script.state


def test_stale_stitches_go_back_to_pending_and_fresh_ones_stay(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = _job(sessions, tmp_path)
    old, fresh = _stitching(sessions, job_id)
    with sessions.begin() as session:
        session.execute(
            update(ScriptRow)
            .where(ScriptRow.id == old)
            .values(stitch_started_at=utcnow() - timedelta(minutes=30))
        )

    with sessions.begin() as session:
        assert requeue_stale_stitches(session, older_than=timedelta(minutes=10), job_id="x") == 0
    with sessions.begin() as session:
        assert requeue_stale_stitches(session, older_than=timedelta(minutes=10)) == 1

    assert _state(sessions, old) is State.PENDING
    assert _state(sessions, fresh) is State.RUNNING
    # Pending again, with every segment done: the stitch can be claimed once more.
    with sessions.begin() as session:
        assert claim_stitch(session, old)


def test_last_activity_is_the_latest_claim_or_finish(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = _job(sessions, tmp_path)
    with sessions.begin() as session:
        assert last_activity(session, job_id) is None
        first = list_segments(session, job_id)[0].segment_pk

    before = utcnow()
    with sessions.begin() as session:
        assert claim_segment(session, first)
    with sessions.begin() as session:
        claimed = last_activity(session, job_id)
    assert claimed is not None and claimed.tzinfo is not None
    assert before <= claimed <= utcnow()

    with sessions.begin() as session:
        assert finish_segment(session, first, audio_seconds=1.0)
    with sessions.begin() as session:
        finished = last_activity(session, job_id)
    assert finished is not None and finished > claimed
    with sessions.begin() as session:
        assert last_activity(session, "no-such-job") is None
