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

# The app's configuration carries the settings' `segments_per_task` (see workers.app), so
# whoever sends a job's work with that app batches it as the workers were told to.
SEGMENTS_PER_TASK = "rime_batch_segments_per_task"

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
    """Sends the pipeline's tasks through one Celery app.

    Segments go `per_task` to a synthesis task, in plan order, so a script's segments travel
    together and its stitch comes due as early as it can.
    """

    def __init__(self, app: Celery, per_task: int | None = None) -> None:
        if per_task is not None and per_task < 1:
            raise ValueError(f"a task carries at least one segment, not {per_task}")
        self.app = app
        self.per_task = per_task or app.conf[SEGMENTS_PER_TASK]

    def segments(self, segment_pks: Iterable[int]) -> int:
        """Synthesis tasks of `per_task` segments each, in order, over one connection; how
        many tasks."""
        pks = list(segment_pks)
        batches = [pks[i : i + self.per_task] for i in range(0, len(pks), self.per_task)]
        with self.app.producer_or_acquire() as producer:
            for batch in batches:
                self.app.send_task(SYNTHESIZE, args=[batch], producer=producer)
        return len(batches)

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
