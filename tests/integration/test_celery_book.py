"""A book made by Celery workers: the same stage as the embedded executor's, run by the job's
rollup task once every script is stitched (real workers, Redis, PostgreSQL, the local engine)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mutagen.id3 import ID3

from pipeline.files import sha256_file
from pipeline.manifest import load_manifest
from pipeline.plan import build_plan
from pipeline.store.states import State
from rime_local.server import RunningEngine
from tests.e2e.test_book import chapters_of
from tests.fixtures.celery_workers import (
    CeleryEnv,
    WorkerPool,
    celery_env,
    celery_workers,
    wait_for_job,
)
from workers.commands import submit

__all__ = ["celery_env", "celery_workers"]

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

EngineFactory = Callable[..., RunningEngine]
KEY = "rk-b00c-5e12a7f4"

MANIFEST = """\
job: course
defaults:
  speaker: cove
  samplingRate: 16000
  formats: [mp3]
book:
  title: A Short Course
  author: The Faculty
scripts:
  - id: lesson-1
    title: Getting Started
    text: Welcome to the first lesson. Today we begin.
  - id: lesson-2
    title: Going Further
    text: In the second lesson we go further. Then we stop.
  - id: lesson-3
    text: The last lesson is short.
"""


def test_workers_assemble_the_book_before_the_job_is_done(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: EngineFactory,
    tmp_path: Path,
) -> None:
    engine = engine_factory(api_keys=[KEY])
    env = celery_env.with_changes(rime_api_url=engine.http_url, RIME_API_KEY=KEY)
    celery_workers.start(env, count=2, threads=2)
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    plan = build_plan(load_manifest(manifest))

    job_id = submit(plan, app=env.app(), database_url=env.database_url)
    summary = wait_for_job(env, job_id, celery_workers, timeout=90)

    assert summary.job.state is State.DONE, summary.job.error
    assert summary.book is not None and summary.book.state is State.DONE
    out = Path(plan.destination)
    for file in summary.book.outputs:
        assert sha256_file(out / file.key) == file.sha256  # published at its stable path
    m4b = out / "book" / "a-short-course.m4b"
    assert [title for title, _, _ in chapters_of(m4b)] == [
        "Getting Started",
        "Going Further",
        "lesson-3",
    ]
    assert str(ID3(out / "book" / "03-lesson-3.mp3")["TRCK"]) == "3/3"
    assert not (out / "releases" / job_id / "lesson-1.wav").exists()
