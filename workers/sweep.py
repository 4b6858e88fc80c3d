"""The sweeper: finds work left by dead workers and jobs that stopped moving, and sends it again.

The broker redelivers the messages of a worker that died, but only after its visibility
timeout (many minutes), and not at all when a message was lost (a broker restarted without
persistence) or acknowledged by a duplicate that skipped while the original was still running.
The sweeper does not wait for that. It trusts only the job table:

- a segment or stitch whose executor has not beaten for `executor_timeout` seconds belongs to a
  dead worker, so it is put back to pending and its job's work is sent again: an idle worker
  takes it over within about a minute. A claim whose executor still beats is never touched,
  however long it runs, so nothing live is synthesized (and billed) twice;
- a running job with no claim or finish for `stall` seconds has lost its messages, so
  everything it still needs is sent again (at most once per stall window);
- a webhook delivery whose time has come (its first attempt, or a retry after a failed one)
  gets a `deliver` task, once per attempt unless that task is lost (then again a minute later).

Sending twice is safe: every step claims its row first. Every worker runs the sweeper on a
thread, but a lock in Redis lets only one of them sweep per interval. A worker that starts
sweeps at once, so a job whose workers all died finishes when one comes back.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import timedelta

import redis
import redis.exceptions
from sqlalchemy import Engine

from pipeline.store import State, deliveries, executors, transitions, views
from pipeline.store.schema import utcnow
from workers.dispatch import Dispatcher

log = logging.getLogger(__name__)

LOCK_KEY = "rime-batch:sweep"
KICK_PREFIX = "rime-batch:kick"
DELIVER_PREFIX = "rime-batch:deliver"
# A delivery's task not taken up in this long (lost, or stuck behind a long queue) is sent again.
DELIVER_RESEND_SECONDS = 60.0
# Jobs looked at per sweep; more than any one deployment runs at once.
MAX_JOBS = 10_000


@dataclass(frozen=True)
class Swept:
    """What one sweep of one job did."""

    job_id: str
    segments_requeued: int
    stitches_requeued: int
    stalled: bool
    sent: int


class Sweeper:
    """Puts dead workers' claims back and resends the work of stalled jobs."""

    def __init__(
        self,
        db: Engine,
        dispatch: Dispatcher,
        client: redis.Redis,
        *,
        executor_timeout: float,
        stall_seconds: float,
        interval: float,
    ) -> None:
        self.db = db
        self.dispatch = dispatch
        self.redis = client
        self.executor_timeout = executor_timeout
        self.stall = timedelta(seconds=stall_seconds)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> list[Swept]:
        """Sweep every running job once; what was done for each job that needed it."""
        with self.db.begin() as conn:
            jobs = [
                row.job_id for row in views.list_jobs(conn, limit=MAX_JOBS, state=State.RUNNING)
            ]
        done = [self.sweep_job(job_id) for job_id in jobs]
        return [s for s in done if s.sent]

    def sweep_job(self, job_id: str) -> Swept:
        """Requeue the job's dead executors' claims; resend its work if any or it stalled."""
        with self.db.begin() as conn:
            segments, stitches = transitions.requeue_orphans(
                conn, dead_before=executors.dead_before(self.executor_timeout), job_id=job_id
            )
        with self.db.begin() as conn:
            last = views.last_activity(conn, job_id)
        stalled = last is None or utcnow() - last > self.stall
        sent = 0
        if segments or stitches or (stalled and self._first_kick(job_id)):
            sent = self.dispatch.outstanding(self.db, job_id)
            log.warning(
                "resent job=%s stale_segments=%d stale_stitches=%d stalled=%s tasks=%d",
                job_id,
                segments,
                stitches,
                stalled,
                sent,
            )
        return Swept(job_id, segments, stitches, stalled, sent)

    def sweep_deliveries(self) -> int:
        """Send a `deliver` task for every webhook delivery whose time has come; the count."""
        with self.db.begin() as conn:
            due = deliveries.due(conn, utcnow())
        sent = 0
        ms = round(DELIVER_RESEND_SECONDS * 1000)
        for row in due:
            # One task per attempt: the key names the attempt the task is for.
            key = f"{DELIVER_PREFIX}:{row.delivery_id}:{row.attempts}"
            if self.redis.set(key, 1, nx=True, px=ms):
                self.dispatch.deliver(row.delivery_id)
                sent += 1
        return sent

    def _first_kick(self, job_id: str) -> bool:
        # A stalled job is resent once per stall window, not at every sweep.
        ms = max(1, round(self.stall.total_seconds() * 1000))
        return bool(self.redis.set(f"{KICK_PREFIX}:{job_id}", 1, nx=True, px=ms))

    def _turn(self) -> bool:
        # Expires just before the next interval, so the sweeps take turns among the workers.
        ms = max(1, round(self.interval * 900))
        return bool(self.redis.set(LOCK_KEY, secrets.token_hex(8), nx=True, px=ms))

    def run(self) -> None:
        """Sweep now and then every `interval` seconds, when it is this worker's turn."""
        while True:
            try:
                if self._turn():
                    self.sweep()
                    self.sweep_deliveries()
            except Exception as exc:
                # Redis, the database or the broker away: this sweep is skipped, the next
                # one tries again. The thread must outlive any of them.
                log.warning("sweep skipped: %s", type(exc).__name__)
                log.debug("sweep failed", exc_info=True)
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        """Run the sweeper on a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="rime-batch-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after its current sweep."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
