"""The event a job's end tells its webhooks, recorded in the change that ends the job.

`job_ended(conn, job_id, event)` runs inside the transaction that ends the job: the body is
built once, from the job table as that transaction sees it, and one pending delivery per URL of
the job's `notify` option is inserted beside it. So an event exists exactly when the end does (a
rolled-back end leaves none), and no process has to stay alive for it to be sent: sending is
`pipeline.deliver`'s, from whichever process gets to it first.

The body (UTF-8 JSON, the exact bytes signed and sent; `pipeline.webhook` has the signature):

    {"id": "evt_…", "event": "job.done", "created_at": "2026-12-01T14:03:12.412Z",
     "production": {"name": "clinic-ivr", "destination": "s3://bucket/clinic"},
     "job_id": "3f9c1d7a5b2e", "release": "3f9c1d7a5b2e", "state": "done", "error": null,
     "scripts": {"total": 3, "done": 3, "failed": 0, "cancelled": 0},
     "chars": 1520, "billed_chars": 1544,
     "outputs": [{"script": "ivr/welcome", "format": "wav-mulaw", "uri": "…", "sha256": "…",
                  "bytes": 12044}]}
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection, select

from pipeline.options import JobOptions
from pipeline.store import State, deliveries, views
from pipeline.store.schema import JOBS, utcnow


class JobEvent(StrEnum):
    """How a job ended, as its webhooks are told."""

    PUBLISHED = "job.published"  # every script done, and its release published
    # Every script done, its release not published (publishing is manual, or a newer release
    # is already published).
    DONE = "job.done"
    FAILED = "job.failed"  # nothing left to run, and a script failed
    CANCELLED = "job.cancelled"  # stopped by `rime-batch cancel`


# The event of each state a job can end in (a publish step tells `job.published` itself).
ENDED_IN: dict[State, JobEvent] = {
    State.DONE: JobEvent.DONE,
    State.FAILED: JobEvent.FAILED,
    State.CANCELLED: JobEvent.CANCELLED,
}


def new_event_id() -> str:
    """A fresh event id: the same on every attempt and every URL of one event."""
    return f"evt_{secrets.token_hex(12)}"


def _timestamp(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_document(
    summary: views.JobSummary, event: JobEvent, event_id: str, at: datetime
) -> dict[str, object]:
    """The event of a job's end, from its summary."""
    job = summary.job

    def count(state: State) -> int:
        return sum(s.state is state for s in summary.scripts)

    return {
        "id": event_id,
        "event": event.value,
        "created_at": _timestamp(at),
        "production": {"name": job.name, "destination": job.destination},
        "job_id": job.job_id,
        "release": job.job_id,  # every job writes its own release, named after it
        "state": job.state.value,
        "error": job.error,
        "scripts": {
            "total": len(summary.scripts),
            "done": count(State.DONE),
            "failed": count(State.FAILED),
            "cancelled": count(State.CANCELLED),
        },
        "chars": job.chars,
        "billed_chars": job.billed_chars,
        "outputs": [
            {
                "script": s.script_id,
                "format": o.format,
                "uri": o.uri,
                "sha256": o.sha256,
                "bytes": o.bytes,
            }
            for s in summary.scripts
            for o in s.outputs
        ],
    }


def event_body(document: dict[str, object]) -> str:
    """The body as sent: compact JSON, ASCII only (nothing for a proxy to re-encode)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True)


def job_ended(conn: Connection, job_id: str, event: JobEvent) -> list[int]:
    """Record `event` for each webhook of the job, in the caller's transaction; the deliveries'
    row ids (none when the job notifies nobody)."""
    options = JobOptions.from_json(conn.scalar(select(JOBS.c.options).where(JOBS.c.id == job_id)))
    if not options.notify:
        return []
    now = utcnow()
    document = event_document(views.job_summary(conn, job_id), event, new_event_id(), now)
    return deliveries.add(conn, job_id, options.notify, event.value, event_body(document), now)
