"""The Celery app: broker, queues, and the settings that make tasks crash-proof.

    celery -A workers.app worker            # or: rime-batch worker
    celery -A workers.app beat              # or: rime-batch beat (schedules' ticks)

- Acknowledged late, after the task ran: a message is only gone once its work is recorded.
  If its worker dies the broker hands it out again (Redis: after the visibility timeout;
  RabbitMQ: when the connection drops; a pool child: at once). One message prefetched per
  thread, so a worker never sits on work another worker could be doing.
- The Redis broker's visibility timeout is longer than any task can run (see
  `pipeline.settings`); a shorter one would hand running tasks to a second worker.
- Task events are off (each costs three more messages a task); Flower
  (`celery -A workers.app flower`) turns them on when it starts, or set
  RIME_BATCH_TASK_EVENTS=1.
- No result backend: the job table holds every result.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from kombu.entity import Exchange, Queue

from pipeline.logs import one_line_faults, quiet_other_libraries
from pipeline.settings import Settings, get_settings
from workers.dispatch import QUEUES, ROUTES, SEGMENTS_PER_TASK, SYNTH_QUEUE, TICK
from workers.runtime import close_runtime, get_runtime, stop_starting

# How often, at most, a worker looks for messages of dead workers to put back on the queue.
MAX_RESTORE_INTERVAL = 10
# A tick not taken within this many intervals (or a minute) is dropped: workers that come back
# after a while run one tick, not every one they missed; a minute leaves room for clock skew.
TICK_EXPIRY_INTERVALS = 10
MIN_TICK_EXPIRY_SECONDS = 60.0


def _queue(name: str) -> Queue:
    # An exchange and routing key of its own: left out, every queue would be bound to the
    # default queue's key and receive a copy of its messages.
    exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]
    return Queue(name, exchange, routing_key=name)  # type: ignore[no-untyped-call]


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for `settings`."""
    visibility = settings.visibility
    return {
        "broker_url": settings.celery_broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": visibility,
            # Look for expired messages about ten times per visibility timeout.
            "unacked_restore_interval": max(1, min(MAX_RESTORE_INTERVAL, int(visibility / 10))),
            "unacked_restore_throttle": 1,
        },
        # A publish waits out a broker restart (about a minute) before it fails.
        "task_publish_retry_policy": {
            "max_retries": 30,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 2,
        },
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Running tasks finish when the broker connection drops; their acknowledgement is lost
        # and the broker delivers them again, which the tasks skip.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_queues": [_queue(name) for name in QUEUES],
        "task_default_queue": SYNTH_QUEUE,
        "task_routes": ROUTES,
        SEGMENTS_PER_TASK: settings.segments_per_task,
        "worker_pool": "threads",
        "worker_concurrency": settings.threads,
        # Beat sends one task, the tick. The schedules and what each has fired live in the job
        # table, so beat keeps no state (the in-memory scheduler: no schedule file anywhere),
        # and two beats, or one restarted, never fire a due time twice.
        "beat_scheduler": "celery.beat:Scheduler",
        "beat_schedule": {
            TICK: {
                "task": TICK,
                "schedule": settings.tick_seconds,
                "options": {
                    "expires": max(
                        MIN_TICK_EXPIRY_SECONDS, TICK_EXPIRY_INTERVALS * settings.tick_seconds
                    )
                },
            }
        },
    }


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app for `settings` (the environment's by default)."""
    app = Celery("rime_batch", include=["workers.tasks"])
    app.conf.update(celery_config(settings or get_settings()))
    return app


app = create_app()

# Celery warns at every lost broker connection, in ten lines, that 6.0 will cancel running
# tasks then, although `worker_cancel_long_running_tasks_on_connection_loss` is set. Its log
# setup turns that warning on after any filter of ours, so the log line is dropped instead.
CANCEL_WARNING = "In Celery 5.1 we introduced an optional breaking change"


def _not_the_cancel_warning(record: logging.LogRecord) -> bool:
    return CANCEL_WARNING not in record.getMessage()


def _setup_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    # Celery has set up its handlers (on the root logger, and on the task logger): other
    # libraries go quiet, and a fault the workers expect and retry is one line on each.
    from workers.tasks import EXPECTED

    quiet_other_libraries(get_settings().log_level)
    warned = logging.getLogger("py.warnings")
    if _not_the_cancel_warning not in warned.filters:
        warned.addFilter(_not_the_cancel_warning)
    if logger is not None:
        one_line_faults(logger.handlers, EXPECTED)


def _start_sweeper(**_: Any) -> None:
    get_runtime(get_settings(), app).start_sweeper()


def _close(**_: Any) -> None:
    close_runtime()


def _stop_starting(**_: Any) -> None:
    stop_starting()


def _tick_at_start(**_: Any) -> None:
    # A beat that was down fires what it missed at once, not one interval after it starts.
    app.send_task(TICK)


after_setup_logger.connect(_setup_logs)
after_setup_task_logger.connect(_setup_logs)
worker_ready.connect(_start_sweeper)
worker_shutting_down.connect(_stop_starting)
worker_shutdown.connect(_close)
beat_init.connect(_tick_at_start)
