"""Errors from talking to Rime, sorted by what the caller should do about them.

    RimeError                   status (int | None) and the server's plain-text message
    ├── TransientError          worth retrying later
    │   ├── RateLimited         429; retry_after seconds from the Retry-After header
    │   ├── ServerError         5xx
    │   ├── StreamCut           the audio ended early, the connection reset mid-body, or the
    │   │                       audio does not decode
    │   ├── ProtocolError       the server sent a message this client cannot parse
    │   ├── ConnectError        no connection (refused, no such host, timed out connecting),
    │   │                       or it closed before any response
    │   └── Timeout             reading or writing took too long
    └── PermanentError          retrying the same request gives the same answer
        ├── BadRequest          400: bad parameters, text too long, unknown speaker
        │   └── InvalidRequest  rejected here, before sending
        └── AuthError           401/403: bad key, or a billing problem (Rime uses 401 for both)

Every error says whether the failed request was billed: whether Rime had started to send its
audio (a cut stream, a stall after the first bytes), which means it generated, and charged for,
the text. No retries happen in the client: the pipeline decides what to do with each class.
Messages never contain the API key: the clients pass it to `redact` before building an error.
"""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime

from pipeline.errors import RimeBatchError

# A server message longer than this is cut: a proxy's HTML error page says nothing useful past it.
MAX_MESSAGE_CHARS = 300
REDACTED = "[redacted]"
WITHHELD = "[message withheld]"


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced."""
    if not secret:
        return text
    # Replacing can splice a new occurrence out of the pieces around it; repeat until none is left.
    for _ in range(8):
        if secret not in text:
            return text
        text = text.replace(secret, REDACTED)
    return WITHHELD if secret not in WITHHELD else ""


def clean_message(text: str, secret: str | None = None) -> str:
    """A server message made safe and short: key removed, whitespace folded, truncated."""
    # Redact before cutting: a key that crosses the cut would leave its first characters behind.
    # Redact before folding too: a key that contains whitespace would no longer match.
    folded = " ".join(redact(text, secret).split())
    if len(folded) > MAX_MESSAGE_CHARS:
        folded = folded[: MAX_MESSAGE_CHARS - 1].rstrip() + "…"
    return folded


class RimeError(RimeBatchError):
    """Base of every failure talking to Rime; `status` is the HTTP status when there was one."""

    # Whether Rime had begun sending audio: generated, so charged for, whatever came after.
    billed = False

    def __init__(self, message: str, *, status: int | None = None, billed: bool = False) -> None:
        self.message = message
        self.status = status
        self.billed = billed or self.billed
        super().__init__(message)

    def __str__(self) -> str:
        prefix = f"Rime HTTP {self.status}" if self.status is not None else "Rime"
        return f"{prefix}: {self.message}" if self.message else prefix

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, message={self.message!r})"


class TransientError(RimeError):
    """A failure that may go away: retry after a pause."""


class RateLimited(TransientError):
    """429: too many concurrent generations; `retry_after` is in seconds when the server said."""

    def __init__(
        self, message: str, *, status: int | None = 429, retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status)

    def __str__(self) -> str:
        text = super().__str__()
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g}s)"
        return text

    def __repr__(self) -> str:
        return (
            f"RateLimited(status={self.status!r}, message={self.message!r}, "
            f"retry_after={self.retry_after!r})"
        )


class ServerError(TransientError):
    """5xx: trouble on Rime's side."""


class StreamCut(TransientError):
    """The audio stream ended early or does not decode."""

    billed = True


class ProtocolError(TransientError):
    """The server sent something this client cannot parse."""


class ConnectError(TransientError):
    """No connection to Rime (refused, unknown host, timed out connecting), or it closed before
    a response started."""


class Timeout(TransientError):
    """Reading or writing took longer than allowed."""


class PermanentError(RimeError):
    """Retrying the same request gives the same answer."""


class BadRequest(PermanentError):
    """400: bad parameters, text too long, unknown speaker."""


class InvalidRequest(BadRequest):
    """A request refused before sending because Rime would answer 400."""


class AuthError(PermanentError):
    """401/403: the key is wrong, or the account has a billing problem."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date; None if absent."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; a naive result means the zone was missing or "-0000".
        return None
    now = time.time() if now is None else now
    return max(0.0, round(when.timestamp() - now, 3))


def error_for_status(
    status: int,
    body: str,
    *,
    retry_after: str | None = None,
    secret: str | None = None,
) -> RimeError:
    """The error for a non-success HTTP answer, carrying the server's (cleaned) message."""
    message = clean_message(body, secret) or f"HTTP status {status}"
    if status == 429:
        return RateLimited(message, status=status, retry_after=parse_retry_after(retry_after))
    if status == 408:
        return Timeout(message, status=status)
    if status >= 500:
        return ServerError(message, status=status)
    if status == 400:
        return BadRequest(message, status=status)
    if status in (401, 403):
        return AuthError(message, status=status)
    # Other 4xx, and 1xx/3xx that a correct endpoint never sends (e.g. a redirecting proxy).
    return PermanentError(message, status=status)
