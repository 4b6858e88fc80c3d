"""How long a SIGKILLed worker's segments wait before another worker finishes them, at the
default settings (heartbeat 1 s, executor timeout 30 s, sweep every 15 s, the broker's
visibility timeout from the retry policy).

One worker process claims every segment of a job and is SIGKILLed with all of its requests in
flight (its engine waits minutes before the first byte); a second worker process, started just
before, is idle. Nothing is redelivered before the visibility timeout, so it is the idle
worker's sweeper that finds the dead executor and sends its work again. Printed: seconds from
the SIGKILL until every segment is done (by the idle worker), until the job is done, and what
the engines were asked for and billed. Expected: the executor timeout plus at most one sweep
interval plus a synthesis, under a minute.

Redis: a redis-server of its own on a free port. Job table: a SQLite file in a temporary folder
(or --database-url, e.g. PostgreSQL).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, func, select
from throughput_celery import (  # bench/ is on sys.path when run as a script
    LimitedEngine,
    make_plan,
    start_redis,
    start_workers,
)

from pipeline.settings import Settings
from pipeline.store import create_engine_for, migrate
from pipeline.store.schema import JOBS, SEGMENTS
from pipeline.store.states import State
from workers.app import create_app
from workers.commands import submit

# The killed worker's engine: no first byte before it is long dead.
NEVER_MS = 600_000


def count(db: Engine, job_id: str, state: State) -> int:
    """The job's segments in `state`."""
    with db.begin() as conn:
        found = conn.scalar(
            select(func.count()).where(SEGMENTS.c.job_id == job_id, SEGMENTS.c.state == state)
        )
    return int(found or 0)


def job_state(db: Engine, job_id: str) -> State:
    """The job's state."""
    with db.begin() as conn:
        return State(str(conn.scalar(select(JOBS.c.state).where(JOBS.c.id == job_id))))


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate()` every 50 ms; exit if it is still false after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def main() -> None:
    """Kill one worker mid-job and print how long its work took to be taken over."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=4, help="all claimed by the killed worker")
    parser.add_argument("--ttfb-ms", type=int, default=300, help="the idle worker's engine")
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rime-batch-takeover-") as tmp:
        folder = Path(tmp)
        server, redis_url = start_redis(folder)
        database_url = args.database_url or f"sqlite:///{folder / 'jobs.db'}"
        migrate(database_url)
        limit = 2 * args.segments
        hung = LimitedEngine(limit, NEVER_MS, folder / "hung-engine.log")
        answering = LimitedEngine(limit, args.ttfb_ms, folder / "engine.log")
        variables = {
            "CELERY_BROKER_URL": redis_url,
            "RIME_BATCH_REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "RIME_BATCH_CONCURRENCY": str(limit),
            "RIME_BATCH_LIMIT_NAMESPACE": f"takeover-{time.time_ns()}",
        }
        processes: list[subprocess.Popen[bytes]] = []
        db = create_engine_for(database_url)
        try:
            [doomed] = start_workers(
                1,
                args.segments,
                {**variables, "RIME_API_URL": hung.http_url},
                folder,
                name="doomed",
            )
            processes.append(doomed)
            plan = make_plan(folder / "job", scripts=1, lines=args.segments)
            settings = Settings(CELERY_BROKER_URL=redis_url, DATABASE_URL=database_url)
            job_id = submit(plan, app=create_app(settings), database_url=database_url)
            total = sum(len(s.segments) for s in plan.scripts)
            wait(lambda: count(db, job_id, State.RUNNING) == total, 60, "every segment claimed")
            processes += start_workers(
                1, 2, {**variables, "RIME_API_URL": answering.http_url}, folder, name="idle"
            )

            doomed.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            doomed.wait()
            wait(lambda: count(db, job_id, State.DONE) == total, args.timeout, "the takeover")
            segments_seconds = time.monotonic() - killed_at
            wait(lambda: job_state(db, job_id) is State.DONE, args.timeout, "the job")
            job_seconds = time.monotonic() - killed_at
            with db.begin() as conn:
                billed = conn.scalar(
                    select(func.sum(SEGMENTS.c.billed_chars)).where(SEGMENTS.c.job_id == job_id)
                )
            asked, answered = hung.metrics(), answering.metrics()
        finally:
            for process in processes:
                process.kill()
                process.wait()
            db.dispose()
            hung.stop()
            answering.stop()
            server.kill()
            server.wait()

    defaults = Settings()
    print(
        f"defaults: heartbeat {defaults.heartbeat_seconds:g} s, executor timeout "
        f"{defaults.executor_timeout_seconds:g} s, sweep every {defaults.sweep_seconds:g} s, "
        f"visibility timeout {defaults.visibility:g} s"
    )
    print(f"{total} segments, every one in flight on the killed worker")
    print(f"taken over and done: {segments_seconds:.1f} s after the SIGKILL")
    print(f"job done:            {job_seconds:.1f} s after the SIGKILL")
    print(
        f"requests: {asked['requests']} to the killed worker's engine (none answered), "
        f"{answered['completed']} completed by the idle worker's; billed {billed} characters "
        f"of {plan.chars}"
    )


if __name__ == "__main__":
    main()
