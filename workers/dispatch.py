"""Sending work to the workers: task names, queues, and what a job still needs sent.

Tasks are sent by name, so any Celery app pointed at the broker can send them (the command
line, a test, another service) without importing the task code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import Celery
from sqlalchemy import Engine

from pipeline.store import views

log = logging.getLogger(__name__)

SYNTHESIZE = "rime_batch.synthesize"
STITCH = "rime_batch.stitch"
FINISH = "rime_batch.finish"
DELIVER = "rime_batch.deliver"
# Fires the schedules that are due (see `pipeline.scheduler`); sent by `rime-batch beat`.
TICK = "rime_batch.tick"

# Segments wait in one long first-in-first-out queue. Stitches, job rollups, webhooks and
# schedule ticks have their own short queue, so a finished script is stitched (and a finished
# job told, a due schedule fired) while other scripts are still synthesizing, and hosts can be
# given to one kind of work or the other.
SYNTH_QUEUE = "rime-batch"
STITCH_QUEUE = "rime-batch.stitch"
QUEUES = (SYNTH_QUEUE, STITCH_QUEUE)
ROUTES = {
    SYNTHESIZE: {"queue": SYNTH_QUEUE},
    STITCH: {"queue": STITCH_QUEUE},
    FINISH: {"queue": STITCH_QUEUE},
    DELIVER: {"queue": STITCH_QUEUE},
    TICK: {"queue": STITCH_QUEUE},
}


class Dispatcher:
    """Sends the pipeline's tasks through one Celery app."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def segments(self, segment_pks: Iterable[int]) -> int:
        """One synthesis task per segment, in order, over one connection; the count."""
        sent = 0
        with self.app.producer_or_acquire() as producer:
            for segment_pk in segment_pks:
                self.app.send_task(SYNTHESIZE, args=[segment_pk], producer=producer)
                sent += 1
        return sent

    def stitch(self, script_pk: int) -> None:
        """A stitch task for one script (its claim makes a second one harmless)."""
        self.app.send_task(STITCH, args=[script_pk])

    def finish(self, job_id: str) -> None:
        """A task that rolls the job up and writes its results file when it is over."""
        self.app.send_task(FINISH, args=[job_id])

    def deliver(self, delivery_id: int) -> None:
        """A task that makes one attempt of a webhook delivery (its claim makes a second one
        harmless)."""
        self.app.send_task(DELIVER, args=[delivery_id])

    def outstanding(self, db: Engine, job_id: str) -> int:
        """Send everything the job still needs: pending segments, due stitches, the rollup."""
        # Read, then send outside the transaction: on SQLite an open transaction holds the
        # write lock, and the workers would wait for the last message to claim the first.
        with db.begin() as conn:
            todo = views.outstanding(conn, job_id)
        sent = self.segments(todo.segments)
        for script_pk in todo.stitches:
            self.stitch(script_pk)
        # A rollup too: the job may have nothing left but to settle.
        self.finish(job_id)
        sent += len(todo.stitches) + 1
        log.info("sent job=%s segments=%d tasks=%d", job_id, len(todo.segments), sent)
        return sent
