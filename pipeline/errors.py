"""The project's exceptions, one small tree.

    RimeBatchError
    ├── InputError            bad input from the user: one message, exit code 2, no traceback
    │   ├── ManifestError     a manifest field, with file, line (YAML) or row (CSV)
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


class RimeBatchError(Exception):
    """Base of every error this project raises on purpose."""


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
