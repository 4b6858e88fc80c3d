"""Log lines for people: one line an event, other libraries quiet, expected faults in one line.

The command line (`render`, `resume`) and the Celery workers both log through this: each
installs its handler once, quiets the libraries below (their INFO lines are per request, a
thousand-segment job would drown in them) unless RIME_BATCH_LOG_LEVEL=debug, and puts
`OneLineFaults` on its handlers, so that a fault the pipeline expects and waits out (a cut
stream, a 5xx, Redis or the broker away) is one line wherever it is logged, even by a library
that logs it with its traceback. Anything else keeps its traceback: that one is a bug.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis.exceptions

from pipeline.rime.errors import TransientError

# Libraries whose INFO lines are per request or per connection.
OTHER_LIBRARIES = (
    "alembic",
    "boto3",
    "botocore",
    "httpcore",
    "httpx",
    "s3transfer",
    "urllib3",
    "websockets",
)

# Faults every process of the pipeline expects and retries.
EXPECTED: tuple[type[BaseException], ...] = (
    TransientError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

# Wrappers hold the error they stand for here (Celery's Retry in `exc`, Reject in `reason`).
_WRAPPED = ("exc", "reason")


def quiet_other_libraries(level: str) -> None:
    """Other libraries at WARNING, unless `level` is "debug" (then they log as they like)."""
    for name in OTHER_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if level == "debug" else logging.WARNING)


def expected_fault(
    exc: BaseException | None, expected: tuple[type[BaseException], ...]
) -> BaseException | None:
    """The expected fault `exc` is or stands for (its cause, a wrapper's error), if any.

    Not its context: an error raised while handling an expected one may well be a bug.
    """
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, expected):
            return current
        todo.append(current.__cause__)
        todo += [getattr(current, name, None) for name in _WRAPPED]
    return None


class OneLineFaults(logging.Filter):
    """Drops the traceback of a record whose exception is an expected fault; names it instead."""

    def __init__(self, expected: tuple[type[BaseException], ...] = EXPECTED) -> None:
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record; an expected fault's loses its traceback (and keeps its text)."""
        if not record.exc_info:
            return True
        fault = expected_fault(record.exc_info[1], self.expected)
        if fault is None:
            return True
        message = record.getMessage()
        told = (str(fault).splitlines() or [""])[0]
        if told not in message:
            message = f"{message} ({type(fault).__name__}: {told})"
        record.msg, record.args = message, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def one_line_faults(
    handlers: Iterable[logging.Handler], expected: tuple[type[BaseException], ...] = EXPECTED
) -> None:
    """Put `OneLineFaults` on each handler, once."""
    for handler in handlers:
        if not any(isinstance(f, OneLineFaults) for f in handler.filters):
            handler.addFilter(OneLineFaults(expected))
