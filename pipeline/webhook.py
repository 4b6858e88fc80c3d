"""The webhook protocol: which URLs a job may notify, how each POST is signed, when it is retried.

Signed the way Stripe signs its webhooks, not the way GitHub does. GitHub's
`X-Hub-Signature-256: sha256=<hmac of the body>` covers the body alone, so a request captured
once verifies forever; here the MAC covers a timestamp too, and a receiver refuses a signature
older than a few minutes (`TOLERANCE_SECONDS`). Each attempt is signed afresh with its own
time; the body, and the event id inside it, stay the same across attempts:

    Rime-Batch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>
    Rime-Batch-Event-Id: evt_...      (the same on every attempt and every URL of one event)
    Rime-Batch-Event: job.done

The `v1=` tag names the scheme, so a later one can be sent beside it without breaking
receivers. URLs may carry a secret of their own (Slack's do, in their path): what is shown of
them is `scheme://host[:port]/…` (`redact_url`).
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

SIGNATURE_HEADER = "Rime-Batch-Signature"
EVENT_ID_HEADER = "Rime-Batch-Event-Id"
EVENT_HEADER = "Rime-Batch-Event"
SCHEME = "v1"
# How old a signature a receiver should still accept (Stripe's libraries default to the same).
TOLERANCE_SECONDS = 300
# Longer URLs than this are refused; browsers and proxies cut them around here anyway.
MAX_URL_CHARS = 2000


def check_url(url: object) -> str:
    """`url` if a job may notify it: http or https, with a host; ValueError saying why not."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("must be an http:// or https:// URL")
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"is longer than {MAX_URL_CHARS} characters")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError("contains a space or a control character")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a port that is no number raises here
    except ValueError:
        raise ValueError(f"{redact_url(url)} is not a URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL, not {parts.scheme or 'a path'}")
    if not host:
        raise ValueError(f"{redact_url(url)} names no host")
    return url


def redact_url(url: str) -> str:
    """`url` as it may be shown: scheme, host and port; its path and query (which may hold a
    token) and any user name or password become `…`."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme or not host:
        return "<unparsable URL>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    rest = parts.path not in ("", "/") or parts.query or parts.fragment
    return f"{parts.scheme}://{netloc}/{'…' if rest else ''}"


def scrub(text: str, url: str) -> str:
    """`text` (an error message) with `url`, and its path and query, replaced by the redacted
    form."""
    parts = urlsplit(url)
    shown = redact_url(url)
    text = text.replace(url, shown)
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    if len(tail) > 1:
        text = text.replace(tail, "/…")
    if parts.password:
        text = text.replace(parts.password, "…")
    return text


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """Hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `Rime-Batch-Signature` header of one POST of `body` at `timestamp`."""
    return f"t={timestamp},{SCHEME}={signature(secret, body, timestamp)}"


def verify(
    secret: str, body: bytes, header: str, *, now: float, tolerance: float = TOLERANCE_SECONDS
) -> bool:
    """Whether `header` signs `body` under `secret` within `tolerance` seconds of `now`: what a
    receiver checks."""
    fields: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        fields.setdefault(key, []).append(value)
    stamps = fields.get("t", [])
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp)
    return any(hmac.compare_digest(expected, given) for given in fields.get(SCHEME, []))


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard one webhook is tried: exponential backoff with jitter, bounded in time."""

    timeout_seconds: float = 10.0  # one POST: to connect, to send, to hear the status
    initial_wait: float = 1.0
    max_wait: float = 300.0
    jitter: float = 1.0  # seconds, added at random to every wait
    give_up_seconds: float = 3600.0  # after the event, no attempt starts later than this

    def wait(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds before the next attempt, after `attempts` failed ones."""
        exponential = min(self.max_wait, self.initial_wait * 2.0 ** max(0, attempts - 1))
        return exponential + (rng or random).uniform(0, self.jitter)

    def next_attempt(
        self,
        attempts: int,
        created_at: datetime,
        now: datetime,
        rng: random.Random | None = None,
    ) -> datetime | None:
        """When to try again after `attempts` failed ones, or None: give up.

        The last attempt is made at the deadline rather than skipped because a wait overshot it.
        """
        deadline = created_at + timedelta(seconds=self.give_up_seconds)
        if now >= deadline:
            return None
        return min(now + timedelta(seconds=self.wait(attempts, rng)), deadline)


DEFAULT_DELIVERY = DeliveryPolicy()
