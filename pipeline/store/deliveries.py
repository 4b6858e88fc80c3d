"""Webhook deliveries in the job table: one row per event and URL, and its attempts.

A row is `pending` until a POST of it is answered 2xx (`delivered`) or its time is up
(`failed`). `next_attempt_at` is when it is due. A sender claims a due row by moving
`next_attempt_at` past its own request's timeout (compare-and-set, like every claim here), so
two senders never POST the same row at once; one that dies mid-request leaves the row due again
once that lease is over. Delivery is at least once: a sender that dies after the receiver
answered but before it recorded the answer is repeated, with the same event id.

Functions take a Connection and never commit; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection, CursorResult, func, insert, select, update

from pipeline.store.schema import DELIVERIES
from pipeline.webhook import redact_url

# Errors are kept for people to read, one line each.
MAX_ERROR_CHARS = 500


class DeliveryState(StrEnum):
    """Where one webhook delivery stands."""

    PENDING = "pending"  # not answered 2xx yet; tried again at next_attempt_at
    DELIVERED = "delivered"  # a POST was answered 2xx
    FAILED = "failed"  # given up: its time ran out (the last error says why)


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery: what its sender needs for one attempt."""

    delivery_id: int
    job_id: str
    url: str
    event: str
    body: str
    attempt: int  # the number of the attempt being made (1 for the first)
    created_at: datetime


@dataclass(frozen=True)
class Due:
    """A pending delivery whose time has come, and how many attempts it has had."""

    delivery_id: int
    attempts: int


@dataclass(frozen=True)
class DeliveryStatus:
    """One delivery's line in a status table."""

    delivery_id: int
    event: str
    url: str  # redacted: scheme://host/…
    state: DeliveryState
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None


def _clip(error: str) -> str:
    line = " ".join(error.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


def add(
    conn: Connection, job_id: str, urls: Iterable[str], event: str, body: str, now: datetime
) -> list[int]:
    """One pending delivery of `body` per URL, due now; their row ids."""
    ids = []
    for url in urls:
        ids.append(
            conn.execute(
                insert(DELIVERIES)
                .values(
                    job_id=job_id,
                    url=url,
                    event=event,
                    body=body,
                    state=DeliveryState.PENDING.value,
                    attempts=0,
                    created_at=now,
                    next_attempt_at=now,
                )
                .returning(DELIVERIES.c.id)
            ).scalar_one()
        )
    return ids


def due(
    conn: Connection, now: datetime, *, job_id: str | None = None, limit: int = 1000
) -> list[Due]:
    """Pending deliveries whose time has come (of one job, or of every job), oldest first."""
    query = (
        select(DELIVERIES.c.id, DELIVERIES.c.attempts)
        .where(
            DELIVERIES.c.state == DeliveryState.PENDING.value,
            DELIVERIES.c.next_attempt_at <= now,
        )
        .order_by(DELIVERIES.c.next_attempt_at, DELIVERIES.c.id)
        .limit(limit)
    )
    if job_id is not None:
        query = query.where(DELIVERIES.c.job_id == job_id)
    return [Due(row.id, row.attempts) for row in conn.execute(query)]


def next_due(conn: Connection, job_id: str) -> datetime | None:
    """When the job's next pending delivery is due; None when none is pending."""
    soonest: datetime | None = conn.scalar(
        select(func.min(DELIVERIES.c.next_attempt_at)).where(
            DELIVERIES.c.job_id == job_id, DELIVERIES.c.state == DeliveryState.PENDING.value
        )
    )
    return soonest


def claim(
    conn: Connection, delivery_id: int, now: datetime, lease_until: datetime
) -> Delivery | None:
    """Take a due pending delivery for one attempt, until `lease_until`; None if it is not due
    (someone else holds it, or it is over)."""
    row = conn.execute(
        update(DELIVERIES)
        .where(
            DELIVERIES.c.id == delivery_id,
            DELIVERIES.c.state == DeliveryState.PENDING.value,
            DELIVERIES.c.next_attempt_at <= now,
        )
        .values(attempts=DELIVERIES.c.attempts + 1, next_attempt_at=lease_until)
        .returning(
            DELIVERIES.c.job_id,
            DELIVERIES.c.url,
            DELIVERIES.c.event,
            DELIVERIES.c.body,
            DELIVERIES.c.attempts,
            DELIVERIES.c.created_at,
        )
    ).one_or_none()
    if row is None:
        return None
    return Delivery(
        delivery_id, row.job_id, row.url, row.event, row.body, row.attempts, row.created_at
    )


def mark_delivered(conn: Connection, delivery_id: int, status: int, now: datetime) -> bool:
    """pending -> delivered (a 2xx answer, whichever attempt it was); False if it was over."""
    return _set(
        conn,
        delivery_id,
        None,
        state=DeliveryState.DELIVERED.value,
        delivered_at=now,
        next_attempt_at=None,
        last_status=status,
        last_error=None,
    )


def mark_retry(
    conn: Connection,
    delivery: Delivery,
    *,
    status: int | None,
    error: str,
    next_attempt_at: datetime,
) -> bool:
    """Record a failed attempt and when to try again; False if a later attempt took over."""
    return _set(
        conn,
        delivery.delivery_id,
        delivery.attempt,
        next_attempt_at=next_attempt_at,
        last_status=status,
        last_error=_clip(error),
    )


def mark_failed(conn: Connection, delivery: Delivery, *, status: int | None, error: str) -> bool:
    """pending -> failed after a failed attempt (its time is up); False if a later one took
    over."""
    return _set(
        conn,
        delivery.delivery_id,
        delivery.attempt,
        state=DeliveryState.FAILED.value,
        next_attempt_at=None,
        last_status=status,
        last_error=_clip(error),
    )


def _set(conn: Connection, delivery_id: int, attempt: int | None, **values: object) -> bool:
    row = (DELIVERIES.c.id == delivery_id) & (DELIVERIES.c.state == DeliveryState.PENDING.value)
    if attempt is not None:
        # The outcome of an attempt whose lease ran out is not written over a newer attempt's.
        row = row & (DELIVERIES.c.attempts == attempt)
    result = conn.execute(update(DELIVERIES).where(row).values(**values))
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def for_job(conn: Connection, job_id: str) -> list[DeliveryStatus]:
    """The job's deliveries, in the order they were recorded."""
    rows = conn.execute(
        select(DELIVERIES).where(DELIVERIES.c.job_id == job_id).order_by(DELIVERIES.c.id)
    ).mappings()
    return [
        DeliveryStatus(
            delivery_id=row["id"],
            event=row["event"],
            url=redact_url(row["url"]),
            state=DeliveryState(row["state"]),
            attempts=row["attempts"],
            created_at=row["created_at"],
            next_attempt_at=row["next_attempt_at"],
            delivered_at=row["delivered_at"],
            last_status=row["last_status"],
            last_error=row["last_error"],
        )
        for row in rows
    ]
