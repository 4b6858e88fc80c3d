"""Finding dead workers' work in the job table, on real SQLite and real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from pipeline.manifest import load_manifest
from pipeline.plan import build_plan
from pipeline.store import State, create_engine_for, executors, migrate, record_plan
from pipeline.store.schema import SCRIPTS, utcnow
from pipeline.store.transitions import (
    Claim,
    claim_segment,
    claim_stitch,
    finish_segment,
    requeue_orphans,
)
from pipeline.store.views import last_activity, list_segments
from tests.fixtures.celery_workers import write_manifest
from tests.fixtures.jobs import ME, row_in


@pytest.fixture
def db(database_url: str) -> Engine:
    migrate(database_url)
    return create_engine_for(database_url)


def _job(db: Engine, folder: Path) -> str:
    plan = build_plan(load_manifest(write_manifest(folder, scripts=2, lines=2)))
    with db.begin() as conn:
        return record_plan(conn, plan)


def _stitching(db: Engine, job_id: str, claims: list[Claim]) -> list[int]:
    """Finish every segment of the job and claim both stitches (one claim each); row ids."""
    with db.begin() as conn:
        refs = list_segments(conn, job_id)
    for ref in refs:
        with db.begin() as conn:
            assert claim_segment(conn, ref.segment_pk, ME)
            assert finish_segment(conn, ref.segment_pk, ME, audio_seconds=1.0) is not None
    scripts = sorted({ref.script_pk for ref in refs})
    for script_pk, claim in zip(scripts, claims, strict=True):
        with db.begin() as conn:
            assert claim_stitch(conn, script_pk, claim)
    return scripts


def _state(db: Engine, script_pk: int) -> State:
    with db.begin() as conn:
        script = row_in(conn, SCRIPTS, script_pk)
        assert script is not None
        return script.state


def test_dead_executors_stitches_go_back_to_pending_and_live_ones_stay(
    db: Engine, tmp_path: Path
) -> None:
    job_id = _job(db, tmp_path)
    with db.begin() as conn:
        executors.register(conn, "live", executors.WORKER)
    # ME's executor has no row: it is gone. "live" beats (its row is fresh).
    old, fresh = _stitching(db, job_id, [ME, Claim("live.1", "live")])
    with db.begin() as conn:
        conn.execute(update(SCRIPTS).values(stitch_started_at=utcnow() - timedelta(minutes=30)))

    cutoff = utcnow() - timedelta(minutes=1)
    with db.begin() as conn:
        assert requeue_orphans(conn, dead_before=cutoff, job_id="x") == (0, 0)
    with db.begin() as conn:
        assert requeue_orphans(conn, dead_before=cutoff) == (0, 1)

    assert _state(db, old) is State.PENDING
    assert _state(db, fresh) is State.RUNNING
    # Pending again, with every segment done: the stitch can be claimed once more.
    with db.begin() as conn:
        assert claim_stitch(conn, old, ME)


def test_last_activity_is_the_latest_claim_or_finish(db: Engine, tmp_path: Path) -> None:
    job_id = _job(db, tmp_path)
    with db.begin() as conn:
        assert last_activity(conn, job_id) is None
        first = list_segments(conn, job_id)[0].segment_pk

    before = utcnow()
    with db.begin() as conn:
        assert claim_segment(conn, first, ME)
    with db.begin() as conn:
        claimed = last_activity(conn, job_id)
    assert claimed is not None and claimed.tzinfo is not None
    assert before <= claimed <= utcnow()

    with db.begin() as conn:
        assert finish_segment(conn, first, ME, audio_seconds=1.0)
    with db.begin() as conn:
        finished = last_activity(conn, job_id)
    assert finished is not None and finished > claimed
    with db.begin() as conn:
        assert last_activity(conn, "no-such-job") is None
