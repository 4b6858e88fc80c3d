"""Schedules fired by real `rime-batch beat` processes through real Celery workers (Redis,
PostgreSQL, the local engine): every due time fires exactly once across two beats, a beat
killed and one restarted, and a window in which no beat ran fires once, at the restart, not
once per missed slot."""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline.scheduler import Fired, tick
from pipeline.schedules import next_due
from pipeline.store import State, create_engine_for
from pipeline.store.schedules import Outcome, Run, get_schedule, runs_of
from pipeline.store.schema import JOBS
from rime_local.server import RunningEngine
from tests.fixtures.celery_workers import (
    ROOT,
    Beat,
    CeleryEnv,
    WorkerPool,
    celery_env,
    celery_workers,
    wait_until,
)
from tests.fixtures.cli import Cli
from workers import commands

__all__ = ["celery_env", "celery_workers"]

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

NAME = "prompts-every-4s"
PERIOD = 4
CRON = f"* * * * * */{PERIOD}"  # croniter's sixth field: seconds
TICK = "0.5"


def write_manifest(folder: Path, text: str = "Thank you for calling. Please hold.") -> Path:
    """One short prompt; after the first run its segment is cached, so a run takes a second."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.yaml"
    path.write_text(
        "job: scheduled-prompts\noutput: out\ndefaults:\n  speaker: cove\n  modelId: mistv2\n"
        f"  samplingRate: 8000\n  formats: [wav]\nscripts:\n  - id: hold\n    text: {text}\n",
        encoding="utf-8",
    )
    return path


def runs(env: CeleryEnv) -> list[Run]:
    """The schedule's runs, oldest due time first."""
    db = create_engine_for(env.database_url)
    try:
        with db.begin() as conn:
            return runs_of(conn, get_schedule(conn, NAME).id)
    finally:
        db.dispose()


def settled_runs(env: CeleryEnv) -> list[Run]:
    """The runs once every tick already sent has run: none still claimed (its tick still
    planning and submitting), and none new for a due period."""
    deadline = time.monotonic() + 60
    seen, since = runs(env), time.monotonic()
    while True:
        time.sleep(0.2)
        now_runs = runs(env)
        if now_runs != seen:
            seen, since = now_runs, time.monotonic()
        elif time.monotonic() - since > PERIOD + 1 and all(
            r.outcome is not Outcome.CLAIMED for r in now_runs
        ):
            return now_runs
        if time.monotonic() > deadline:
            raise AssertionError(f"the runs did not settle: {now_runs}")


def scheduled_jobs(env: CeleryEnv) -> dict[str, State]:
    """Every job that names the schedule in its options, and its state."""
    db = create_engine_for(env.database_url)
    try:
        with db.begin() as conn:
            rows = conn.execute(select(JOBS.c.id, JOBS.c.state, JOBS.c.options)).all()
    finally:
        db.dispose()
    return {r.id: r.state for r in rows if (r.options or {}).get("schedule") == NAME}


def slots(after: datetime, until: datetime) -> list[datetime]:
    """The due times in (after, until]."""
    found = []
    due = next_due(CRON, after)
    while due <= until:
        found.append(due)
        due = next_due(CRON, due)
    return found


def consecutive(dues: list[datetime]) -> bool:
    return all(b == next_due(CRON, a) for a, b in itertools.pairwise(dues))


def after(moment: datetime, env: CeleryEnv) -> list[Run]:
    return [r for r in runs(env) if r.due_at > moment]


def now() -> datetime:
    return datetime.now(UTC)


def test_each_due_time_fires_once_across_two_beats_a_kill_and_a_restart(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine: RunningEngine,
    cli: Cli,
    tmp_path: Path,
) -> None:
    env = celery_env.with_changes(rime_api_url=engine.http_url, RIME_BATCH_TICK_SECONDS=TICK)
    manifest = write_manifest(tmp_path / "job")
    added = cli.using(database_url=env.database_url).run(
        "schedule", "add", NAME, manifest, "--cron", CRON
    )
    assert added.returncode == 0, added
    celery_workers.start(env, count=2, threads=2)
    first, second = celery_workers.start_beat(env), celery_workers.start_beat(env)

    # Two beats: two ticks every half second, run by two workers racing for each due time.
    wait_until(lambda: len(runs(env)) >= 2, 30, "two runs under two beats", celery_workers)
    first.kill()
    one_beat = now()
    wait_until(
        lambda: len(after(one_beat, env)) >= 2, 30, "two runs under one beat", celery_workers
    )
    second.kill()
    killed = now()
    while_alive = runs(env)

    # No beat for about three due times.
    time.sleep(2.5 * PERIOD + 1)
    assert not after(killed + timedelta(seconds=1), env), "a run with no beat alive"
    # A beat that ticks only once a minute: what it fires comes from its tick at start.
    slow = celery_workers.start_beat(env.with_changes(RIME_BATCH_TICK_SECONDS=60))
    restarted = now()
    wait_until(lambda: after(killed, env), 15, "the missed window's run", celery_workers)
    time.sleep(1.5 * PERIOD)
    # Once for the whole window, for its newest due time, by the tick at the restart.
    [collapsed] = after(killed, env)
    window = slots(killed, collapsed.created_at)
    assert len(window) >= 2, window
    assert collapsed.due_at == window[-1]
    assert abs(collapsed.created_at - restarted) < timedelta(seconds=PERIOD / 2)

    # A quick beat again beside the slow one: the runs go on, one per due time.
    resumed_at = now()
    celery_workers.start_beat(env)
    wait_until(
        lambda: len(after(resumed_at, env)) >= 2, 30, "runs after the restart", celery_workers
    )
    slow.kill()
    for beat in celery_workers.workers:
        if isinstance(beat, Beat) and beat.alive:
            beat.kill()
    # A tick the workers took just before the kill may still be planning its run.
    everything = settled_runs(env)
    resumed = [r for r in everything if r.due_at > collapsed.due_at]

    # No gap while a beat was alive, and no due time twice (the table could not hold it).
    assert consecutive([r.due_at for r in while_alive])
    assert consecutive([r.due_at for r in resumed])
    assert len({r.due_at for r in everything}) == len(everything)
    # Exactly one job per run that submitted one, and no job without its run.
    for run in everything:
        assert run.outcome is Outcome.SUBMITTED or (
            run.outcome is Outcome.FAILED and "already being rendered" in (run.error or "")
        ), run
    # And each due time was fired by one tick only: the others found it claimed.
    fired = re.findall(rf"schedule {NAME} due (\S+ \S+)Z: ", celery_workers.logs())
    assert sorted(Counter(fired).values()) == [1] * len(everything), Counter(fired)
    assert set(fired) == {f"{r.due_at:%Y-%m-%d %H:%M:%S}" for r in everything}
    submitted = [r.job_id for r in everything if r.outcome is Outcome.SUBMITTED]
    assert len(submitted) >= 6
    wait_until(
        lambda: set(scheduled_jobs(env).values()) <= {State.DONE},
        60,
        "the scheduled jobs to finish",
        celery_workers,
    )
    jobs = scheduled_jobs(env)
    assert sorted(jobs) == sorted(submitted), (jobs, submitted)
    assert (tmp_path / "job" / "out" / "hold.wav").is_file()
    # Beat kept no schedule file where it ran (the job table holds what it needs).
    assert not list(ROOT.glob("celerybeat-schedule*"))


def test_schedule_run_submits_through_the_workers_now(
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine: RunningEngine,
    cli: Cli,
    tmp_path: Path,
) -> None:
    env = celery_env.with_changes(rime_api_url=engine.http_url)
    run = cli.using(database_url=env.database_url, **env.variables())
    manifest = write_manifest(tmp_path / "job", "Your call is important to us.")
    # Due only at 02:00 UTC on the first of January: nothing fires it but `schedule run`.
    assert run.run("schedule", "add", NAME, manifest, "--cron", "0 2 1 1 *").returncode == 0
    celery_workers.start(env, count=1, threads=2)
    before = now()

    fired = run.run("schedule", "run", NAME)

    assert fired.returncode == 0, fired
    [only] = runs(env)
    assert only.outcome is Outcome.SUBMITTED and only.job_id is not None
    assert before <= only.due_at <= now()
    assert f"job {only.job_id}" in fired.stdout
    # Done, then published by the same rollup: the stable file appears once the publish ends.
    wait_until(
        lambda: (
            scheduled_jobs(env) == {only.job_id: State.DONE}
            and (tmp_path / "job" / "out" / "hold.wav").is_file()
        ),
        60,
        "the job to finish and its release to be published",
        celery_workers,
    )


def test_ticks_racing_at_one_due_time_submit_one_job(
    celery_env: CeleryEnv, cli: Cli, tmp_path: Path
) -> None:
    """Eight ticks at the same moment, each with its own connection to the job table and the
    broker, as eight workers' would be: one fires, the others find the due time claimed."""
    manifest = write_manifest(tmp_path / "job")
    cron = "*/5 * * * *"
    added = cli.using(database_url=celery_env.database_url).run(
        "schedule", "add", NAME, manifest, "--cron", cron
    )
    assert added.returncode == 0, added
    due = next_due(cron, now())
    db = create_engine_for(celery_env.database_url)
    submitter = commands.submitter(celery_env.app(), database_url=celery_env.database_url)
    tickers = 8
    start = threading.Barrier(tickers)
    fired: list[Fired] = []

    def one_tick() -> None:
        start.wait()
        fired.extend(tick(db, submitter, now=due + timedelta(seconds=1)))

    try:
        threads = [threading.Thread(target=one_tick) for _ in range(tickers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        db.dispose()
    [only] = fired
    assert only.due_at == due and only.outcome is Outcome.SUBMITTED, only
    [run] = runs(celery_env)
    assert run.job_id == only.job_id
    assert list(scheduled_jobs(celery_env)) == [only.job_id]
