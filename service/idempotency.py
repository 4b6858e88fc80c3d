"""`Idempotency-Key` on job creation: however many times a POST is sent, one job.

The key is claimed first, in its own transaction, with the request's hash; the primary key makes
a second claim of it fail, concurrent or not. The claimer creates the job and fills in its id;
anyone else waits for that id (or for the claim to go, when creation failed) and answers with
the same job. The same key with another body is refused: it is a client's bug.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from pipeline.store.schema import IDEMPOTENCY_KEYS, utcnow
from service.errors import ApiError

MAX_KEY_CHARS = 200
# How long a second request waits for the first one's job before it gives up with a 409.
WAIT_SECONDS = 60.0


def request_hash(*parts: bytes | str) -> str:
    """A digest of everything that makes two job creations the same request."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _check(key: str) -> None:
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise ApiError(
            422,
            "invalid_idempotency_key",
            f"Idempotency-Key: 1 to {MAX_KEY_CHARS} printable characters",
            "Idempotency-Key",
        )


def once(db: Engine, key: str, digest: str, create: Callable[[], str]) -> tuple[str, bool]:
    """The job of `key`: created now by `create()`, or the one an earlier request created; and
    whether it was created now."""
    _check(key)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            with db.begin() as conn:
                conn.execute(
                    insert(IDEMPOTENCY_KEYS).values(
                        key=key, request_hash=digest, created_at=utcnow()
                    )
                )
        except IntegrityError:
            pass
        else:
            return _create(db, key, create), True
        with db.begin() as conn:
            row = conn.execute(
                select(IDEMPOTENCY_KEYS).where(IDEMPOTENCY_KEYS.c.key == key)
            ).first()
        if row is not None:
            if row.request_hash != digest:
                raise ApiError(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with another request; use a new key",
                    "Idempotency-Key",
                )
            if row.job_id is not None:
                return str(row.job_id), False
        # Being created (or its creation just failed and the key was let go): look again.
        if time.monotonic() > deadline:
            raise ApiError(
                409, "idempotency_in_progress", "a request with this key is still being handled"
            )
        time.sleep(0.05)


def _create(db: Engine, key: str, create: Callable[[], str]) -> str:
    try:
        job_id = create()
    except BaseException:
        # Nothing was created: a retry of the request may try again.
        with db.begin() as conn:
            conn.execute(delete(IDEMPOTENCY_KEYS).where(IDEMPOTENCY_KEYS.c.key == key))
        raise
    with db.begin() as conn:
        conn.execute(
            update(IDEMPOTENCY_KEYS).where(IDEMPOTENCY_KEYS.c.key == key).values(job_id=job_id)
        )
    return job_id
