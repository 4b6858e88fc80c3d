"""A render that dies (SIGKILL) or is interrupted (Ctrl-C) finishes with `rime-batch resume`,
without synthesizing again what was already done."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipeline.storage import cache_key_path
from pipeline.store import create_engine_for
from rime_local.server import RunningEngine
from tests.e2e.test_render import (
    IVR_AND_NARRATION,
    KEY,
    LOSSY,
    by_id,
    prompts,
    results_of,
    write,
)
from tests.fixtures.cli import Cli, Running
from tests.fixtures.placement import assert_segments_in_order, script_layout
from tests.fixtures.services import poll_until

EngineFactory = Callable[..., RunningEngine]
PROMPTS = 8
SEGMENTS = PROMPTS + 2 + 6  # the prompts, two IVR scripts and the narration's six


def slow_engine(engine_factory: EngineFactory) -> RunningEngine:
    """An engine slow enough that a render takes several seconds: 300 ms to the first byte,
    audio streamed at twice real time."""
    return engine_factory(api_keys=[KEY], ttfb_ms=300, pacing=2.0)


def manifest(folder: Path) -> Path:
    """Prompts, IVR scripts and a six-segment narration."""
    return write(folder, prompts(PROMPTS) + IVR_AND_NARRATION.split("scripts:\n", 1)[1])


def segment_states(database_url: str) -> list[tuple[str, str]]:
    """(state, cache key) of every segment in the database (the test's only job)."""
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT state, cache_key FROM segments ORDER BY id"))
            return [(str(state), str(key)) for state, key in rows]
    finally:
        engine.dispose()


def wait_for_done(run: Cli, running: Running, at_least: int, timeout: float = 60.0) -> None:
    """Poll the job table until `at_least` segments are done (the render still running)."""

    def enough() -> bool:
        assert running.proc.poll() is None, running.wait()
        try:
            states = segment_states(run.database_url)
        except sa.exc.OperationalError:
            return False  # the tables are not created yet
        return sum(state == "done" for state, _ in states) >= at_least

    poll_until(enough, timeout, f"{at_least} segments done", interval=0.1)


def assert_every_output_in_order(run: Cli, results: dict[str, Any], folder: Path) -> None:
    """Every output of the job holds each of its script's segments once, in order."""
    for script in results["scripts"]:
        layout = script_layout(run.database_url, results["job_id"], script["id"])
        for output in script["outputs"]:
            lossy = {} if output["format"] == "wav" else LOSSY
            assert_segments_in_order(Path(output["uri"]), layout, folder, **lossy)


def test_a_killed_render_resumes_without_redoing_done_segments(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = slow_engine(engine_factory)
    run = cli.using(engine=engine, api_key=KEY)
    path = manifest(tmp_path)
    running = run.start("render", path, "--concurrency", "2")
    wait_for_done(run, running, at_least=4)

    running.signal(signal.SIGKILL)
    killed = running.wait()
    assert killed.returncode == -signal.SIGKILL
    states = segment_states(run.database_url)
    assert len(states) == SEGMENTS
    done = sum(state == "done" for state, _ in states)
    assert 4 <= done < SEGMENTS
    # A segment whose audio reached the cache just before the kill is not sent again either.
    to_send = sum(
        state != "done" and not (tmp_path / "out" / cache_key_path(key)).exists()
        for state, key in states
    )
    assert to_send > 0
    job_id = results_job_id(killed)

    engine.configure(ttfb_ms=0, pacing=0.0)
    engine.reset_metrics()
    resumed = run.run("resume", job_id[:8])

    assert resumed.returncode == 0, resumed
    assert engine.metrics()["requests"] == to_send + 1  # and the preflight of its one voice
    assert {state for state, _ in segment_states(run.database_url)} == {"done"}
    results = results_of(tmp_path / "out")
    assert results["job_id"] == job_id
    assert results["state"] == "done"

    # Nothing lost, nothing twice: each segment's speech once, in its place.
    assert_every_output_in_order(run, results, tmp_path / "out")


def results_job_id(result: object) -> str:
    """The job id a render announced before it was stopped."""
    found = re.search(r"job ([0-9a-f]{12}):", str(result))
    assert found, f"no job id announced\n{result}"
    return found.group(1)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = slow_engine(engine_factory)
    run = cli.using(engine=engine, api_key=KEY)
    running = run.start("render", manifest(tmp_path), "--concurrency", "2")
    wait_for_done(run, running, at_least=2)

    running.signal(signal.SIGINT)
    stopped = running.wait(timeout=30)

    assert stopped.returncode == 130, stopped
    assert "Traceback" not in stopped.stderr
    job_id = results_job_id(stopped)
    assert f"rime-batch resume {job_id}" in stopped.stderr
    states = [state for state, _ in segment_states(run.database_url)]
    # Every claim was handed back: nothing is left looking as if a worker still held it.
    assert "running" not in states
    assert 2 <= states.count("done") < SEGMENTS

    engine.configure(ttfb_ms=0, pacing=0.0)
    engine.reset_metrics()
    resumed = run.run("resume", job_id)

    assert resumed.returncode == 0, resumed
    assert engine.metrics()["requests"] <= SEGMENTS - states.count("done") + 1  # + preflight
    assert results_of(tmp_path / "out")["state"] == "done"


def _recorded(run: Cli) -> bool:
    try:
        return bool(segment_states(run.database_url))
    except sa.exc.OperationalError:
        return False  # the tables are not there yet


def _only_job(run: Cli) -> str:
    engine = create_engine_for(run.database_url)
    try:
        with engine.connect() as conn:
            (job_id,) = conn.scalars(sa.text("SELECT id FROM jobs")).all()
            return str(job_id)
    finally:
        engine.dispose()


def test_a_failed_stitch_is_redone_by_resume_without_a_request(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    # Slow to the first byte: the render is still synthesizing when the blocker appears.
    engine = engine_factory(api_keys=[KEY], ttfb_ms=500)
    run = cli.using(engine=engine, api_key=KEY)
    path = write(tmp_path, IVR_AND_NARRATION)
    running = run.start("render", path)
    # A folder where the narration's MP3 (its first format) should go, made once the job is
    # recorded (a folder there beforehand is refused as bad input): the encoder cannot put the
    # file in place.
    poll_until(lambda: _recorded(run), timeout=60, what="the job recorded")
    job_id = _only_job(run)
    release = tmp_path / "out" / "releases" / job_id
    blocker = release / "narration" / "chapter.mp3"
    blocker.mkdir(parents=True)

    failed = running.wait()

    assert failed.returncode == 1, failed
    assert "Traceback" not in failed.stderr
    # A failed job publishes nothing: its results are in its release folder only.
    assert not (tmp_path / "out" / "results.json").exists()
    scripts = by_id(results_of(release))
    narration = scripts["narration/chapter"]
    assert narration["state"] == "failed"
    assert narration["error"].startswith("stitching failed: "), narration
    assert narration["outputs"] == []
    assert {scripts[s]["state"] for s in ("ivr/welcome", "ivr/menu")} == {"done"}
    # Neither format was left behind, whole or half-written, nor any temporary file.
    assert sorted(p.name for p in (release / "narration").iterdir()) == ["chapter.mp3"]
    assert blocker.is_dir() and not any(blocker.iterdir())
    requests = engine.metrics()["requests"]
    assert requests == 2 + 6 + 1  # the segments, and the preflight's check of the one voice

    # Every segment of the narration is done: the resume stitches it and sends nothing.
    blocker.rmdir()
    engine.reset_metrics()
    resumed = run.run("resume", results_job_id(failed))

    assert resumed.returncode == 0, resumed
    assert engine.metrics()["requests"] == 0
    results = results_of(tmp_path / "out")
    assert results["state"] == "done"
    assert by_id(results)["narration/chapter"]["billed_chars"] == narration["billed_chars"]
    assert_every_output_in_order(run, results, tmp_path / "out")
