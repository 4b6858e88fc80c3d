"""The Celery tasks: each takes a row id, runs one step of `workers.flow`, and returns.

Errors of the job table or of Redis (a restart, a failover) are retried with backoff; the
step is safe to run again. Rime's errors never reach here: the stages record them.
"""

from __future__ import annotations

from typing import Any

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc

from pipeline import logs
from pipeline.settings import get_settings
from workers import flow
from workers.app import app
from workers.dispatch import DELIVER, FINISH, STITCH, SYNTHESIZE, TICK
from workers.runtime import Runtime, get_runtime

# Infrastructure that comes back by itself: worth retrying the whole step.
RETRY_ON = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.exceptions.RedisError,
)
# What a worker expects and waits out, logged in one line without a traceback wherever it is
# logged (Celery's own lines about a task included): what the tasks retry, Rime's transient
# errors, and the broker going away.
EXPECTED = (*logs.EXPECTED, *RETRY_ON, kombu.exceptions.OperationalError, ConnectionError)
RETRYING: dict[str, Any] = {
    "bind": True,
    "autoretry_for": RETRY_ON,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": None,
}


def _runtime() -> Runtime:
    return get_runtime(get_settings(), app)


@app.task(name=SYNTHESIZE, **RETRYING)  # type: ignore[untyped-decorator]
def synthesize(self: Any, segment_pks: list[int] | int) -> list[str]:
    """Synthesize segments side by side; send each script's stitch when its last one is done.

    A bare row id is one segment (a message sent before tasks carried several)."""
    pks = [segment_pks] if isinstance(segment_pks, int) else segment_pks
    return [result.outcome.value for result in flow.synthesize_all(_runtime(), pks)]


@app.task(name=STITCH, **RETRYING)  # type: ignore[untyped-decorator]
def stitch(self: Any, script_pk: int) -> str:
    """Stitch one script; send its job's rollup when it was the last one."""
    return flow.stitch(_runtime(), script_pk).outcome.value


@app.task(name=FINISH, **RETRYING)  # type: ignore[untyped-decorator]
def finish(self: Any, job_id: str) -> str:
    """Roll a job up and write its results file when it is over."""
    return flow.finish(_runtime(), job_id).value


@app.task(name=DELIVER, **RETRYING)  # type: ignore[untyped-decorator]
def deliver(self: Any, delivery_id: int) -> str:
    """Make one attempt of a webhook delivery; a failed one is tried again by the sweeper."""
    return flow.deliver(_runtime(), delivery_id)


# Not retried: the next tick comes `tick_seconds` later, and does whatever this one could not.
@app.task(name=TICK)  # type: ignore[untyped-decorator]
def tick() -> int:
    """Fire the schedules that are due; how many due times this tick handled."""
    return len(flow.tick(_runtime()))
