"""Plain functions behind the command line's `submit`, `worker` and `cancel`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from pipeline.plan import JobPlan
from pipeline.settings import get_settings
from pipeline.store import (
    JobNotFound,
    State,
    close_sessions,
    open_sessions,
    record_plan,
    transitions,
    views,
)
from pipeline.store.schema import JobRow
from workers.dispatch import QUEUES, Dispatcher


@contextmanager
def _sessions(database_url: str | None) -> Iterator[sessionmaker[Session]]:
    sessions = open_sessions(database_url or get_settings().database_url)
    try:
        yield sessions
    finally:
        close_sessions(sessions)


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
    with _sessions(database_url) as sessions:
        with sessions.begin() as session:
            if isinstance(work, JobPlan):
                job_id = record_plan(session, work)
            else:
                job_id = views.resolve_job_id(session, work)
                job = session.get(JobRow, job_id)
                if job is None:
                    raise JobNotFound(f"no job {job_id!r}")
                if job.state is not State.RUNNING:
                    transitions.reset_for_resume(session, job_id)
            transitions.start_job(session, job_id)
        # Only once the rows are committed: a worker may pick the first task up at once.
        Dispatcher(_app(app)).outstanding(sessions, job_id)
    return job_id


def cancel(job: str, *, database_url: str | None = None) -> int:
    """Cancel a job; the number of its segments that will not run. Queued tasks then skip."""
    with _sessions(database_url) as sessions, sessions.begin() as session:
        return transitions.cancel_job(session, views.resolve_job_id(session, job))


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
