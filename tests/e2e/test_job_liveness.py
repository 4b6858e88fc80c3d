"""Jobs say honestly whether anything still runs them: a killed render shows as interrupted, a
live one cannot be resumed behind its back, and a cancel stops what it is sending."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from pipeline.store import create_engine_for
from rime_local.server import RunningEngine
from tests.e2e.test_render import KEY, results_of
from tests.e2e.test_render_resume import (
    SEGMENTS,
    manifest,
    results_job_id,
    segment_states,
    slow_engine,
    wait_for_done,
)
from tests.fixtures.cli import Cli
from tests.fixtures.services import poll_until

EngineFactory = Callable[..., RunningEngine]
# Fast enough that a test sees a dead render within a couple of seconds.
LIVENESS = {"RIME_BATCH_HEARTBEAT_SECONDS": "0.2", "RIME_BATCH_EXECUTOR_TIMEOUT_SECONDS": "1.5"}


def billed(database_url: str) -> tuple[int, int]:
    """(billed characters of the segments, of the scripts) in the test's job table."""
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            segments = conn.scalar(sa.text("SELECT COALESCE(SUM(billed_chars), 0) FROM segments"))
            scripts = conn.scalar(sa.text("SELECT COALESCE(SUM(billed_chars), 0) FROM scripts"))
            return int(segments or 0), int(scripts or 0)
    finally:
        engine.dispose()


def test_a_killed_render_shows_as_interrupted_and_its_resume_waits_for_that(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = slow_engine(engine_factory)
    run = cli.using(engine=engine, api_key=KEY, **LIVENESS)
    running = run.start("render", manifest(tmp_path), "--concurrency", "2")
    wait_for_done(run, running, at_least=3)

    # While it runs, a resume would do its work a second time: refused, one line.
    refused = run.run("resume", "--concurrency", "2", results_job_id_of(run))
    assert refused.returncode == 2, refused
    assert "is still running" in refused.stderr and "--force" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused
    assert "Traceback" not in refused.output

    running.signal(signal.SIGKILL)
    killed = running.wait()
    job_id = results_job_id(killed)
    # Its heartbeat stops; once it is older than the timeout, status says so.
    poll_until(
        lambda: "interrupted" in run.run("status").stdout,
        timeout=30,
        what="status to show the killed render's job as interrupted",
    )
    listed = run.run("status", job_id)
    assert f"job {job_id}" in listed.stdout and "interrupted" in listed.stdout, listed
    done = sum(state == "done" for state, _ in segment_states(run.database_url))

    engine.configure(ttfb_ms=0, pacing=0.0)
    engine.reset_metrics()
    resumed = run.run("resume", job_id)

    assert resumed.returncode == 0, resumed
    assert {state for state, _ in segment_states(run.database_url)} == {"done"}
    assert engine.metrics()["requests"] <= SEGMENTS - done + 1  # and the preflight's
    # Its progress starts from what the killed run finished, not from 0.
    counts = [int(n) for n in re.findall(rf"\((\d+)/{SEGMENTS} segments", resumed.stderr)]
    assert counts and counts[0] == done + 1, resumed.stderr
    assert results_of(tmp_path / "out")["state"] == "done"


def results_job_id_of(run: Cli) -> str:
    """The id of the only job in the test's table ("" before there is one)."""
    engine = create_engine_for(run.database_url)
    try:
        with engine.connect() as conn:
            return str(conn.scalar(sa.text("SELECT id FROM jobs")) or "")
    except sa.exc.OperationalError:
        return ""  # the tables are not there yet
    finally:
        engine.dispose()


def test_a_render_killed_here_is_known_dead_at_once_and_a_frozen_one_needs_force(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = slow_engine(engine_factory)
    # A long timeout: by its heartbeat alone, a stopped render would look alive for 10 minutes.
    run = cli.using(
        engine=engine,
        api_key=KEY,
        RIME_BATCH_HEARTBEAT_SECONDS="0.2",
        RIME_BATCH_EXECUTOR_TIMEOUT_SECONDS="600",
    )
    running = run.start("render", manifest(tmp_path), "--concurrency", "2")
    wait_for_done(run, running, at_least=2)
    job_id = results_job_id_of(run)

    # Frozen (SIGSTOP): its process is there, so nothing can tell it from a slow one.
    running.signal(signal.SIGSTOP)
    refused = run.run("resume", job_id)
    assert refused.returncode == 2 and "is still running" in refused.stderr, refused
    assert "interrupted" not in run.run("status").stdout
    engine.configure(ttfb_ms=0, pacing=0.0)
    forced = run.run("resume", "--force", job_id)
    assert forced.returncode == 0, forced
    assert {state for state, _ in segment_states(run.database_url)} == {"done"}

    # Killed on this host: its process is gone, which this host can see at once.
    second = run.start("render", manifest(tmp_path), "--output", "again", "--concurrency", "2")
    engine.configure(ttfb_ms=300, pacing=2.0)
    poll_until(lambda: "running" in run.run("status").stdout, timeout=30, what="the second render")
    second.signal(signal.SIGKILL)
    second.wait()
    assert "interrupted" in run.run("status").stdout
    running.signal(signal.SIGKILL)


def test_cancel_stops_new_requests_at_once_and_those_in_flight_within_a_heartbeat(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    # Each request streams for seconds: several are in flight when the cancel comes.
    engine = engine_factory(api_keys=[KEY], ttfb_ms=100, pacing=0.25)
    run = cli.using(engine=engine, api_key=KEY, **LIVENESS)
    running = run.start("render", manifest(tmp_path), "--concurrency", "4")
    wait_for_done(run, running, at_least=1)
    poll_until(lambda: engine.metrics()["in_flight"] >= 2, timeout=30, what="requests in flight")
    job_id = results_job_id_of(run)

    cancelled = run.run("cancel", job_id)
    sent_by_then = engine.metrics()["requests"]

    assert cancelled.returncode == 0, cancelled
    # The requests in flight are stopped by the render's next heartbeat, not finished.
    poll_until(
        lambda: engine.metrics()["in_flight"] == 0, timeout=4, what="requests in flight stopped"
    )
    stopped = running.wait(timeout=30)
    assert stopped.returncode == 1, stopped
    assert "Traceback" not in stopped.output
    assert engine.metrics()["requests"] == sent_by_then  # nothing started after the cancel
    assert {state for state, _ in segment_states(run.database_url)} <= {"done", "cancelled"}
    # What the stopped requests cost is counted: every request whose audio began is billed.
    segments, scripts = billed(run.database_url)
    assert segments == scripts > 0

    # A cancelled job can be taken up again.
    engine.configure(ttfb_ms=0, pacing=0.0)
    resumed = run.run("resume", job_id)
    assert resumed.returncode == 0, resumed
    assert {state for state, _ in segment_states(run.database_url)} == {"done"}
    assert results_of(tmp_path / "out")["state"] == "done"


def test_stalled_attempts_are_billed_as_the_engine_generated_them(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    # Half the requests stall after their first kilobytes for longer than the read timeout:
    # generated (and billed by Rime), then abandoned by the client and retried.
    engine = engine_factory(api_keys=[KEY], fault_stall_rate=0.5, stall_seconds=3, fault_seed=7)
    run = cli.using(engine=engine, api_key=KEY, RIME_BATCH_READ_TIMEOUT_SECONDS="0.3")

    done = run.run("render", manifest(tmp_path), "--concurrency", "4")

    assert done.returncode == 0, done
    metrics = engine.metrics()
    assert metrics["faults"].get("stall", 0) > 0
    assert billed(run.database_url) == (metrics["billed_characters"],) * 2


def test_what_was_billed_before_a_kill_is_in_the_job_table(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY], ttfb_ms=200)
    # A fixed cap, so that three requests are in flight at once.
    run = cli.using(engine=engine, api_key=KEY, RIME_BATCH_ADAPTIVE="0")
    running = run.start("render", manifest(tmp_path), "--concurrency", "3")
    # Once the preflight has passed and the job is recorded, every request stalls after its
    # first kilobytes: when the render is killed, each one in flight has been generated, and
    # billed, long before.
    poll_until(lambda: bool(results_job_id_of(run)), timeout=30, what="the job recorded")
    engine.configure(fault_stall_rate=1.0, stall_seconds=60)
    poll_until(
        lambda: engine.metrics()["in_flight"] >= 3, timeout=30, what="three stalled requests"
    )
    generated = engine.metrics()["billed_characters"]
    # Counted as the first audio byte arrived, not when the audio is complete.
    poll_until(
        lambda: billed(run.database_url) == (generated, generated),
        timeout=10,
        what="the stalled requests billed in the job table",
        detail=lambda: f"{billed(run.database_url)} != {generated}",
    )

    running.signal(signal.SIGKILL)
    running.wait()

    assert billed(run.database_url) == (generated, generated)
    engine.configure(fault_stall_rate=0.0)
    job_id = results_job_id_of(run)
    resumed = run.run("resume", job_id)
    assert resumed.returncode == 0, resumed
    assert billed(run.database_url) == (engine.metrics()["billed_characters"],) * 2
