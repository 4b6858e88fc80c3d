"""Plain functions behind the command line's `submit`, `worker`, `beat` and `cancel`.

Each checks the services it needs before it changes anything: the job table (one line naming
it when it does not answer, from `pipeline.reach`) and, for `submit`, the broker, so a job is
never left running with no task sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Engine

from pipeline.errors import Unreachable, first_line
from pipeline.notify import JobEvent, job_ended
from pipeline.plan import JobPlan
from pipeline.reach import open_job_table
from pipeline.scheduler import Recorded, Submitter
from pipeline.settings import get_settings
from pipeline.store import (
    State,
    load_plan,
    productions,
    record_plan,
    transitions,
    views,
)
from workers.dispatch import QUEUES, Dispatcher

BROKER = "the broker"
# Connection attempts before the broker counts as down: a restart in progress gets a second
# or two, a wrong URL or a stopped broker fails in about that long.
BROKER_CHECKS = 3

# Called with the plan before the job is recorded (or sent again); whatever it returns is
# recorded with the job in the same transaction. `rime-batch submit` checks Rime with it.
Preflight = Callable[[JobPlan], Callable[[Engine, str], None]]


@contextmanager
def _database(database_url: str | None) -> Iterator[Engine]:
    db = open_job_table(database_url or get_settings().database_url)
    try:
        yield db
    finally:
        db.dispose()


def _app(app: Celery | None) -> Celery:
    if app is not None:
        return app
    from workers.app import app as default

    return default


def check_broker(app: Celery) -> None:
    """Unreachable, in about a second, when the broker does not answer."""
    url = str(app.conf.broker_url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(
                max_retries=BROKER_CHECKS - 1, interval_start=0.2, interval_step=0.4, interval_max=1
            )
    except (BrokerError, OSError) as exc:
        raise Unreachable.because(BROKER, url, exc) from None


def submit(
    work: JobPlan | str,
    *,
    app: Celery | None = None,
    database_url: str | None = None,
    preflight: Preflight | None = None,
) -> str:
    """Record a plan, or take a saved or failed job by id, and send its work; the job's id.

    A job that is running already only gets its outstanding work sent again: its workers may
    be alive, so nothing of theirs is reset. The job table and the broker are checked first:
    when either does not answer, nothing is recorded.
    """
    app = _app(app)
    with _database(database_url) as db:
        check_broker(app)
        job_id: str | None = None
        plan = work if isinstance(work, JobPlan) else None
        with db.begin() as conn:
            if isinstance(work, str):
                job_id = views.resolve_job_id(conn, work)
                if preflight is not None:
                    plan = load_plan(conn, job_id)
            if plan is not None:
                # Refused before the preflight, which bills.
                productions.refuse_if_busy(conn, plan.name, plan.destination, job_id=job_id)
        record = preflight(plan) if preflight is not None and plan is not None else None
        with db.begin() as conn:
            if job_id is None:
                assert plan is not None
                job_id = record_plan(conn, plan)
            elif transitions.job_state(conn, job_id) is not State.RUNNING:
                transitions.reset_for_resume(conn, job_id)
            if transitions.job_state(conn, job_id) is not State.RUNNING:
                transitions.start_job(conn, job_id)  # the workers' from now on
        if record is not None:
            record(db, job_id)
        # Only once the rows are committed: a worker may pick the first task up at once.
        try:
            Dispatcher(app).outstanding(db, job_id)
        except (BrokerError, OSError) as exc:
            # The broker went away after the check: what was sent stays sent, and a resubmit
            # sends only what is still outstanding.
            url = str(app.conf.broker_url)
            detail = first_line(exc, url)
            again = f"job {job_id} is recorded: `rime-batch submit {job_id}` sends the rest"
            raise Unreachable(BROKER, url, f"{detail}; {again}") from None
    return job_id


def submitter(app: Celery | None = None, *, database_url: str | None = None) -> Submitter:
    """Where a schedule's runs go from worker land: `submit`, to the workers of `app`."""

    def send(plan: JobPlan, recorded: Recorded) -> None:
        # No preflight: no one waits for its answer, and the job itself says what Rime refused.
        recorded(submit(plan, app=app, database_url=database_url))

    # The workers' stages cache without a namespace.
    return Submitter(send, cache_namespace="")


def cancel(job: str, *, database_url: str | None = None) -> int:
    """Cancel a job, recording its webhooks' `job.cancelled` with it; the number of its segments
    that will not run.

    Queued tasks then skip, and every executor stops its requests in flight for the job within
    a heartbeat (their claims are gone).
    """
    with _database(database_url) as db, db.begin() as conn:
        job_id = views.resolve_job_id(conn, job)
        cancelled = transitions.cancel_job(conn, job_id)
        job_ended(conn, job_id, JobEvent.CANCELLED)
        return cancelled


def run_worker(
    *,
    threads: int | None = None,
    queues: Sequence[str] = QUEUES,
    hostname: str | None = None,
    loglevel: str = "INFO",
    app: Celery | None = None,
) -> None:
    """Run a worker in this process until it is stopped (SIGTERM or Ctrl-C: a warm shutdown).

    The job table is checked first: a worker that cannot reach it would take tasks and fail
    every one. A broker that is down is waited for, as Celery does (it may be restarting).
    """
    settings = get_settings()
    open_job_table(settings.database_url).dispose()
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={threads or settings.threads}",
        f"--queues={','.join(queues)}",
        f"--loglevel={loglevel}",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    _app(app).worker_main(argv)


def run_beat(*, loglevel: str = "INFO", app: Celery | None = None) -> None:
    """Run Celery beat in this process until stopped: a tick for the workers every
    `tick_seconds`, and one at once (see `workers.app`)."""
    _app(app).start(["beat", f"--loglevel={loglevel}"])
