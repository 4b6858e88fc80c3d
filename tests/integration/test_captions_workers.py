"""Captions rendered by Celery workers: the same stages, the workers' own /ws3 client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pipeline.store.states import State
from rime_local.server import RunningEngine
from tests.fixtures.celery_workers import (
    CeleryEnv,
    WorkerPool,
    celery_env,
    celery_workers,
    make_plan,
    wait_for_job,
)
from workers.commands import submit

__all__ = ["celery_env", "celery_workers"]  # fixtures, used by name

KEY = "rk-captions-workers-5e1b"


def test_workers_write_captions_from_word_times_they_cache(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine_factory: Callable[..., RunningEngine],
    tmp_path: Path,
) -> None:
    engine = engine_factory(api_keys=[KEY])
    env = celery_env.with_changes(
        rime_api_url=engine.http_url, RIME_API_KEY=KEY, RIME_WS_URL=engine.ws_url
    )
    celery_workers.start(env, count=1, threads=2)
    plan = make_plan(tmp_path / "job", scripts=2, lines=3)
    plan = replace(
        plan,
        scripts=tuple(
            replace(s, output=replace(s.output, captions=("srt", "vtt"))) for s in plan.scripts
        ),
    )

    job_id = submit(plan, app=env.app(), database_url=env.database_url)
    summary = wait_for_job(env, job_id, celery_workers, timeout=90)

    assert summary.job.state is State.DONE, summary
    destination = Path(plan.destination)
    # Every segment went over /ws3 once (with the key), and its word times were cached.
    assert engine.metrics()["requests"] == 6
    assert len(list(destination.glob("cache/*/*.words.json"))) == 6
    for script in summary.scripts:
        formats = {Path(uri).name.split(".", 1)[1] for uri in script.output_uris}
        assert {"srt", "vtt"} <= formats, script
        srt = (destination / f"{script.script_id}.srt").read_text()
        # Each of the three sentences is in the captions, in order.
        shown = " ".join(
            line for block in srt.strip().split("\n\n") for line in block.split("\n")[2:]
        )
        plan_script = next(s for s in plan.scripts if s.script_id == script.script_id)
        assert shown.split() == " ".join(s.text for s in plan_script.segments).split()
