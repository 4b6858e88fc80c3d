"""The project's exceptions, one small tree.

    RimeBatchError
    ├── Unreachable           a service a command needs (job table, broker, Rime) did not answer:
    │                         one line naming it and its URL, never its password
    ├── InputError            bad input from the user: one message, exit code 2, no traceback
    │   ├── ManifestError     a manifest field, with file, line (YAML) or row (CSV)
    │   ├── OverrideError     a `--set` or `--voice-map` given on the command line, by its flag
    │   ├── MarkupError       malformed Rime inline markup, with its position
    │   └── SegmentationError text that cannot be cut under the character limit
    └── RimeError             talking to Rime; defined with its subtree in pipeline.rime.errors
        ├── TransientError    retry later: RateLimited (429), ServerError (5xx), StreamCut,
        │                     ProtocolError, ConnectError, Timeout
        └── PermanentError    give up: BadRequest (400), AuthError (401/403), other 4xx

Messages never contain the API key.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit


class RimeBatchError(Exception):
    """Base of every error this project raises on purpose."""


def without_credentials(url: str) -> str:
    """`url` as it may be shown: no user name, password or query (which can carry one)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<unparsable URL>"
    if host is None:  # sqlite:///path, a file: nothing secret in it
        return url.split("?", 1)[0].split("#", 1)[0]
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit(parts._replace(netloc=netloc, query="", fragment=""))


def url_secrets(url: str) -> list[str]:
    """The passwords in `url`: its user info's, and any query parameter named like one."""
    try:
        parts = urlsplit(url)
        raw = [parts.password] if parts.password else []
    except ValueError:
        return []
    for pair in parts.query.split("&"):
        key, _, value = pair.partition("=")
        if value and "pass" in unquote(key).lower():
            raw.append(value)
    # Either spelling may be echoed back: as written in the URL, or decoded.
    return [form for secret in raw for form in {secret, unquote(secret)}]


def first_line(exc: BaseException, url: str | None = None) -> str:
    """The first line of what `exc` says (a driver's own error under a wrapper's), without the
    passwords of `url`."""
    inner = getattr(exc, "orig", None)  # SQLAlchemy keeps the driver's error there
    text = str(inner if isinstance(inner, BaseException) else exc)
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = line or type(exc).__name__
    for secret in url_secrets(url) if url else ():
        line = line.replace(secret, "***")
    return line


class Unreachable(RimeBatchError):
    """A service this command needs did not answer; the message names it and its URL."""

    def __init__(self, what: str, url: str, detail: str) -> None:
        self.what = what
        self.url = without_credentials(url)
        super().__init__(f"cannot reach {what} at {self.url}: {detail}")

    @classmethod
    def because(cls, what: str, url: str, exc: BaseException) -> Unreachable:
        """The error for `exc`, on one line, without the URL's password."""
        return cls(what, url, first_line(exc, url))


class InputError(RimeBatchError):
    """The user's input is wrong; the message says where and what."""


class ManifestError(InputError):
    """A manifest problem located by file, line or row, and field."""

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        line: int | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.row = row
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        # A file name the OS gave as undecodable bytes holds surrogates, which no output takes.
        where = (self.file or "<manifest>").encode("utf-8", "backslashreplace").decode()
        if self.line is not None:
            where += f":{self.line}"
        if self.row is not None:
            where += f": row {self.row}"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"


class OverrideError(InputError):
    """A `--set key=value` or `--voice-map old=new` that cannot apply; named as it was given."""

    def __init__(self, flag: str, given: str, message: str) -> None:
        self.flag = flag
        self.given = given  # `speed=9`, or the key alone when that is all there is to name
        self.message = message
        super().__init__(f"{flag} {given}: {message}")


class MarkupError(InputError):
    """Malformed inline markup; `position` is a 0-based character offset into the text."""

    def __init__(self, message: str, position: int) -> None:
        self.message = message
        self.position = position
        super().__init__(f"{message} at character {position}")


class SegmentationError(InputError):
    """The text cannot be split under the limit (e.g. one token longer than the limit)."""

    def __init__(self, message: str, position: int | None = None) -> None:
        self.message = message
        self.position = position
        suffix = f" at character {position}" if position is not None else ""
        super().__init__(f"{message}{suffix}")
