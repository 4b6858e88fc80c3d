"""The API's errors: one JSON shape, `{"error": {"code", "message", "field"?, ...}}`.

Each code is stable (clients branch on it); the message is for people. Errors the library
raises on purpose (`pipeline.errors`) map to a code here, in one table, so a CLI message and
an API message are the same sentence.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from pipeline.errors import (
    InputError,
    ManifestError,
    OverrideError,
    RimeBatchError,
    Unreachable,
)


class ApiError(Exception):
    """An error answered as JSON with `status` and a stable `code`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra or {}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        """The error as the response the client gets."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        return JSONResponse({"error": body}, status_code=self.status, headers=headers)


def unauthorized(message: str = "a bearer token is required") -> ApiError:
    """401: no credentials, or credentials that name no live token."""
    return ApiError(401, "unauthorized", message)


def forbidden(message: str) -> ApiError:
    """403: a token that may not do this (read-only), or a form without its CSRF token."""
    return ApiError(403, "forbidden", message)


def not_found(message: str) -> ApiError:
    """404: no such job, script, output, release or schedule."""
    return ApiError(404, "not_found", message)


def _by_class(exc: RimeBatchError) -> tuple[int, str]:
    # Imported here: the store's errors pull SQLAlchemy, which every caller has anyway.
    from pipeline.publish import PublishRefused
    from pipeline.store.errors import IllegalTransition, JobNotFound
    from pipeline.store.productions import ProductionBusy
    from pipeline.store.schedules import ScheduleExists, ScheduleNotFound

    table: list[tuple[type[RimeBatchError], int, str]] = [
        (JobNotFound, 404, "not_found"),
        (ScheduleNotFound, 404, "not_found"),
        (ProductionBusy, 409, "production_busy"),
        (ScheduleExists, 409, "schedule_exists"),
        (PublishRefused, 409, "publish_refused"),
        (IllegalTransition, 409, "illegal_transition"),
        (ManifestError, 422, "manifest_invalid"),
        (OverrideError, 422, "override_invalid"),
        (InputError, 422, "invalid_input"),
        (Unreachable, 503, "unavailable"),
    ]
    for kind, status, code in table:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal"


def from_library(exc: RimeBatchError) -> ApiError:
    """The API error for one the library raised; a manifest's names its file, line and field."""
    status, code = _by_class(exc)
    if isinstance(exc, ManifestError):
        where = {"file": exc.file, "line": exc.line, "row": exc.row}
        extra = {k: v for k, v in where.items() if v is not None}
        return ApiError(status, code, str(exc), exc.field, extra)
    if isinstance(exc, OverrideError):
        return ApiError(status, code, str(exc), exc.flag.lstrip("-"))
    return ApiError(status, code, str(exc))
