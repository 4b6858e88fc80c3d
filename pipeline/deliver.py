"""Sending webhook deliveries: one signed POST an attempt, each outcome recorded in the job table.

Who sends, all through a `Sender` (the table's claim makes one POST of a row at a time, so any
of them may run together):

- the process that ends a job, once the end is committed: `render` and `resume` (and
  `cancel`) try the job's deliveries for `webhook_wait_seconds` (5 s) and exit, leaving the
  rest pending. A receiver that is down or hangs costs a render that long at most, and never
  its outcome or exit code;
- the workers: a job's rollup that ends it sends a `deliver` task per delivery, and the
  sweeper sends one for every delivery whose time has come, so retries go on, across
  processes, until the policy gives up (an hour by default);
- `rime-batch deliver`: every due delivery, now (from cron, where no worker runs).

Delivery is at least once (see `pipeline.store.deliveries`): receivers dedupe on the event id.
Nothing here logs or stores the secret, the signature or a URL's path and query.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta

import httpx
from pydantic import SecretStr
from sqlalchemy import Engine

from pipeline import __version__
from pipeline.errors import InputError
from pipeline.store import deliveries
from pipeline.store.deliveries import Delivery, DeliveryState
from pipeline.store.schema import utcnow
from pipeline.webhook import (
    EVENT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    DeliveryPolicy,
    redact_url,
    scrub,
    sign,
)

log = logging.getLogger(__name__)

SECRET_VARIABLE = "RIME_BATCH_WEBHOOK_SECRET"
NO_SECRET = f"not sent: {SECRET_VARIABLE} is not set, so the event cannot be signed"
# A claim outlasts its request by this much: the answer is recorded before anyone else tries.
LEASE_MARGIN_SECONDS = 5.0
# Less time than this left of a bounded wait is not worth a request.
MIN_BUDGET_SECONDS = 0.05
USER_AGENT = f"rime-batch/{__version__}"


# The webhook this thread is POSTing, while it does.
_sending: ContextVar[str | None] = ContextVar("webhook_sending", default=None)


class _RedactWebhookUrls(logging.Filter):
    """httpx logs every request's whole URL (at INFO: seen with RIME_BATCH_LOG_LEVEL=debug); a
    webhook's is shown redacted, like everywhere else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _sending.get() is not None and isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


def _redact_httpx_lines() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactWebhookUrls) for f in logger.filters):
        logger.addFilter(_RedactWebhookUrls())


def require_secret(urls: Iterable[str], secret: SecretStr | None) -> None:
    """InputError when a job would notify someone with nothing to sign its events with."""
    if secret is None and any(True for _ in urls):
        raise InputError(f"notify: webhooks are signed with {SECRET_VARIABLE}; set it first")


@dataclass(frozen=True)
class Attempted:
    """One attempt and what came of it."""

    delivery_id: int
    job_id: str
    event: str
    url: str  # redacted
    attempt: int
    state: DeliveryState  # pending: it will be tried again
    status: int | None
    error: str | None


class Sender:
    """Claims due deliveries, POSTs them signed, and records each answer."""

    def __init__(
        self,
        db: Engine,
        policy: DeliveryPolicy,
        secret: SecretStr | None,
        *,
        client: httpx.Client | None = None,
    ) -> None:
        self.db = db
        self.policy = policy
        self._secret = secret
        _redact_httpx_lines()
        # Redirects are not followed: a receiver that moved answers 3xx, which is retried and
        # shown, rather than the signed event going somewhere nobody configured.
        self._client = client or httpx.Client(
            follow_redirects=False, headers={"User-Agent": USER_AGENT}
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def attempt(self, delivery_id: int, *, budget: float | None = None) -> Attempted | None:
        """Claim one due delivery and POST it, in at most `budget` seconds a phase (the policy's
        timeout without one); None when it was not due or someone else holds it."""
        timeout = self.policy.timeout_seconds
        if budget is not None:
            timeout = min(timeout, budget)
        now = utcnow()
        lease = now + timedelta(seconds=self.policy.timeout_seconds + LEASE_MARGIN_SECONDS)
        with self.db.begin() as conn:
            delivery = deliveries.claim(conn, delivery_id, now, lease)
        if delivery is None:
            return None
        status, error = self._post(delivery, timeout)
        return self._record(delivery, status, error)

    def _post(self, delivery: Delivery, timeout: float) -> tuple[int | None, str | None]:
        if self._secret is None:
            return None, NO_SECRET
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret.get_secret_value(), body, int(time.time())),
            EVENT_ID_HEADER: json.loads(delivery.body)["id"],
            EVENT_HEADER: delivery.event,
        }
        sending = _sending.set(delivery.url)
        try:
            # Only the status is read: a receiver's body is none of our business.
            with self._client.stream(
                "POST", delivery.url, content=body, headers=headers, timeout=timeout
            ) as response:
                status = response.status_code
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            told = (str(exc).splitlines() or [""])[0] or "no detail"
            return None, scrub(f"{type(exc).__name__}: {told}", delivery.url)
        finally:
            _sending.reset(sending)
        return status, None if 200 <= status < 300 else f"HTTP {status}"

    def _record(self, delivery: Delivery, status: int | None, error: str | None) -> Attempted:
        now = utcnow()
        shown = redact_url(delivery.url)
        with self.db.begin() as conn:
            if error is None:
                assert status is not None
                deliveries.mark_delivered(conn, delivery.delivery_id, status, now)
                state, when = DeliveryState.DELIVERED, None
            else:
                when = self.policy.next_attempt(delivery.attempt, delivery.created_at, now)
                if when is None:
                    error = f"gave up after {delivery.attempt} attempt(s): {error}"
                    deliveries.mark_failed(conn, delivery, status=status, error=error)
                    state = DeliveryState.FAILED
                else:
                    deliveries.mark_retry(
                        conn, delivery, status=status, error=error, next_attempt_at=when
                    )
                    state = DeliveryState.PENDING
        where = f"job={delivery.job_id} event={delivery.event} url={shown}"
        if state is DeliveryState.DELIVERED:
            log.info("webhook delivered %s status=%s attempt=%d", where, status, delivery.attempt)
        elif when is not None:
            wait = (when - now).total_seconds()
            log.warning(
                "webhook not delivered %s attempt=%d error=%s; next attempt in %.1f s",
                where,
                delivery.attempt,
                error,
                wait,
            )
        else:
            log.warning("webhook failed %s error=%s", where, error)
        return Attempted(
            delivery.delivery_id,
            delivery.job_id,
            delivery.event,
            shown,
            delivery.attempt,
            state,
            status,
            error,
        )

    def due(self, *, job_id: str | None = None, until: float | None = None) -> list[Attempted]:
        """Attempt every delivery due now (of one job, or of all), each once; with `until` (a
        `time.monotonic()` deadline) none runs past it."""
        with self.db.begin() as conn:
            todo = deliveries.due(conn, utcnow(), job_id=job_id)
        done = []
        for row in todo:
            budget = None if until is None else until - time.monotonic()
            if budget is not None and budget < MIN_BUDGET_SECONDS:
                break
            attempted = self.attempt(row.delivery_id, budget=budget)
            if attempted is not None:
                done.append(attempted)
        return done

    def drain(self, job_id: str, seconds: float) -> list[Attempted]:
        """Attempt the job's deliveries, retrying as they come due, for at most `seconds`."""
        until = time.monotonic() + seconds
        done: list[Attempted] = []
        while True:
            done += self.due(job_id=job_id, until=until)
            with self.db.begin() as conn:
                soonest = deliveries.next_due(conn, job_id)
            left = until - time.monotonic()
            if soonest is None or left < MIN_BUDGET_SECONDS:
                return done
            wait = (soonest - utcnow()).total_seconds()
            if wait >= left:
                return done
            time.sleep(max(0.0, wait))
