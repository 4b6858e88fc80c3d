"""Where the service's jobs run: the embedded executor in this process, or the Celery workers.

With no CELERY_BROKER_URL, `EmbeddedRunner` runs the jobs in a thread of its own with one event
loop, one Rime endpoint (the local engine, without a key) and one executor row for the life of
the server, one job at a time in the order they came: the account's concurrency is the whole
process's, as it is `render`'s. With a broker, `CeleryRunner` records and sends a job exactly as
`rime-batch submit` does (`workers.commands.submit`).

Neither checks Rime before a job (`render`'s preflight): nobody waits on a job's first request
here, and the job itself records what Rime refused, as the workers do.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import Connection, Engine

from pipeline.plan import JobPlan
from pipeline.settings import Settings
from pipeline.stages import Event

log = logging.getLogger("rime_batch.service")

# Called in the transaction that records a job, with its id (the service keeps the manifest).
Keep = Callable[[Connection, str], None]


class Runner(Protocol):
    """Starts jobs and says whether it can."""

    kind: str  # "embedded" or "workers"

    def submit(self, plan: JobPlan, keep: Keep) -> str:
        """Record a new job of `plan` and start it; its id."""
        ...

    def resume(self, job_id: str) -> None:
        """Run a failed, cancelled or interrupted job again; done work is kept."""
        ...

    def problem(self) -> str | None:
        """Why jobs cannot start now (the broker down), or None."""
        ...

    def close(self) -> None:
        """Stop taking jobs."""
        ...


class EmbeddedRunner:
    """Jobs run here, one at a time, by the embedded executor (pipeline.embedded)."""

    kind = "embedded"

    def __init__(self, db: Engine, settings: Settings, on_event: Callable[[Event], None]) -> None:
        self.db = db
        self.settings = settings
        self.on_event = on_event
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="rime-batch-jobs", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=60)

    def submit(self, plan: JobPlan, keep: Keep) -> str:
        """Record the job (pending) and queue it."""
        from pipeline.storage import open_store
        from pipeline.store import productions, record_plan

        # A destination that cannot be written, or a production another job is rendering,
        # is refused before anything is recorded.
        open_store(plan.destination).check()
        with self.db.begin() as conn:
            productions.refuse_if_busy(conn, plan.name, plan.destination)
            job_id = record_plan(conn, plan)
            keep(conn, job_id)
        self._jobs.put(job_id)
        return job_id

    def resume(self, job_id: str) -> None:
        """Reset its unfinished work and queue it (a done job's publish is finished now)."""
        from pipeline.embedded import prepare_resume

        if prepare_resume(self.db, job_id, self.settings, force=False) is not None:
            self._jobs.put(job_id)

    def problem(self) -> str | None:
        """Why the job thread cannot run jobs, or None."""
        if self._failed is not None:
            return f"the job runner stopped: {self._failed}"
        return None if self._thread.is_alive() else "the job runner is not running"

    def close(self) -> None:
        """Let the running job go (it shows as interrupted; `resume` finishes it)."""
        self._jobs.put(None)
        self._thread.join(timeout=5)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._failed = exc
            self._ready.set()
            log.exception("the job runner stopped")

    async def _serve(self) -> None:
        from pipeline.embedded import limits_of, rime_endpoint, run_here, stage_context
        from pipeline.executor import Executor
        from pipeline.store.executors import RENDER

        settings = self.settings
        limits = limits_of(settings)

        def local(url: str) -> None:
            log.info("no RIME_API_KEY: jobs render with the local engine at %s", url)

        with (
            rime_endpoint(settings, local) as endpoint,
            Executor.from_settings(self.db, RENDER, settings) as executor,
        ):
            async with stage_context(
                self.db, endpoint, settings, limits, executor, self.on_event
            ) as ctx:
                self._ready.set()
                while (job_id := await asyncio.to_thread(self._jobs.get)) is not None:
                    try:
                        state = await run_here(ctx, job_id, settings, limits)
                        log.info("job %s ended %s", job_id, state.value, extra={"job": job_id})
                    except Exception:
                        log.exception("job %s stopped", job_id, extra={"job": job_id})
                    await asyncio.to_thread(self._deliver, job_id)

    def _deliver(self, job_id: str) -> None:
        # As `render` does: the end's webhooks get a few seconds; `rime-batch deliver` (or a
        # worker's sweeper) sends what is left.
        from pipeline.deliver import Sender
        from pipeline.store import deliveries

        with self.db.begin() as conn:
            if not deliveries.for_job(conn, job_id):
                return
        settings = self.settings
        with Sender(self.db, settings.delivery, settings.webhook_secret) as sender:
            sender.drain(job_id, settings.webhook_wait_seconds)


class CeleryRunner:
    """Jobs go to the Celery workers, as `rime-batch submit` sends them."""

    kind = "workers"

    def __init__(self, db: Engine, settings: Settings) -> None:
        from workers.app import create_app

        self.db = db
        self.settings = settings
        self.app = create_app(settings)

    def submit(self, plan: JobPlan, keep: Keep) -> str:
        """Record the job and send its work (the job table and broker are checked first)."""
        from workers.commands import submit

        job_id = submit(plan, app=self.app, database_url=self.settings.database_url)
        with self.db.begin() as conn:
            keep(conn, job_id)
        return job_id

    def resume(self, job_id: str) -> None:
        """Send the job's outstanding work again (a done job's publish is finished now)."""
        from pipeline.publish import publish_when_due
        from pipeline.store import State, transitions
        from workers.commands import submit

        with self.db.begin() as conn:
            done = transitions.job_state(conn, job_id) is State.DONE
        if done:
            publish_when_due(self.db, job_id)
            return
        submit(job_id, app=self.app, database_url=self.settings.database_url)

    def problem(self) -> str | None:
        """The broker's one-line error when it does not answer."""
        from pipeline.errors import Unreachable
        from workers.commands import check_broker

        try:
            check_broker(self.app)
        except Unreachable as exc:
            return str(exc)
        return None

    def close(self) -> None:
        """Nothing runs here."""


def runner_for(db: Engine, settings: Settings, on_event: Callable[[Event], None]) -> Runner:
    """The workers when a broker is configured, else the embedded executor."""
    if settings.broker_configured:
        return CeleryRunner(db, settings)
    return EmbeddedRunner(db, settings, on_event)
