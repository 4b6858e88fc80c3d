"""Plain functions behind the command line's `submit`, `worker` and `cancel`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from celery import Celery
from sqlalchemy import Engine

from pipeline.plan import JobPlan
from pipeline.settings import get_settings
from pipeline.store import (
    State,
    open_database,
    record_plan,
    transitions,
    views,
)
from workers.dispatch import QUEUES, Dispatcher


@contextmanager
def _database(database_url: str | None) -> Iterator[Engine]:
    db = open_database(database_url or get_settings().database_url)
    try:
        yield db
    finally:
        db.dispose()


def _app(app: Celery | None) -> Celery:
    if app is not None:
        return app
    from workers.app import app as default

    return default


def submit(
    work: JobPlan | str, *, app: Celery | None = None, database_url: str | None = None
) -> str:
    """Record a plan, or take a saved or failed job by id, and send its work; the job's id.

    A job that is running already only gets its outstanding work sent again: its workers may
    be alive, so nothing of theirs is reset.
    """
    with _database(database_url) as db:
        with db.begin() as conn:
            if isinstance(work, JobPlan):
                job_id = record_plan(conn, work)
            else:
                job_id = views.resolve_job_id(conn, work)
                if transitions.job_state(conn, job_id) is not State.RUNNING:
                    transitions.reset_for_resume(conn, job_id)
            if transitions.job_state(conn, job_id) is not State.RUNNING:
                transitions.start_job(conn, job_id)  # the workers' from now on
        # Only once the rows are committed: a worker may pick the first task up at once.
        Dispatcher(_app(app)).outstanding(db, job_id)
    return job_id


def cancel(job: str, *, database_url: str | None = None) -> int:
    """Cancel a job; the number of its segments that will not run.

    Queued tasks then skip, and every executor stops its requests in flight for the job within
    a heartbeat (their claims are gone).
    """
    with _database(database_url) as db, db.begin() as conn:
        return transitions.cancel_job(conn, views.resolve_job_id(conn, job))


def run_worker(
    *,
    threads: int | None = None,
    queues: Sequence[str] = QUEUES,
    hostname: str | None = None,
    loglevel: str = "INFO",
    app: Celery | None = None,
) -> None:
    """Run a worker in this process until it is stopped (SIGTERM or Ctrl-C: a warm shutdown)."""
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={threads or get_settings().threads}",
        f"--queues={','.join(queues)}",
        f"--loglevel={loglevel}",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    _app(app).worker_main(argv)
