"""Expected faults are one log line wherever they are logged; anything else keeps its traceback.

Real loggers and handlers, real exception classes (Rime's, redis-py's, Celery's wrappers); the
worker's wiring is checked in a real process, with Celery's own logging setup.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import kombu.exceptions
import pytest
import redis.exceptions
import sqlalchemy.exc
from celery.exceptions import Reject, Retry

from pipeline.errors import RimeBatchError
from pipeline.logs import EXPECTED, one_line_faults
from pipeline.rime.errors import AuthError, RateLimited, ServerError, StreamCut
from workers.tasks import EXPECTED as WORKER_EXPECTED

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing plain lines to a buffer through a handler with the filter on."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    one_line_faults([handler], WORKER_EXPECTED)
    logger = logging.getLogger(f"test_logs.{id(buffer)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)


def log_while_handling(logger: logging.Logger, error: BaseException) -> None:
    """`logger.exception` from inside the `except` of `error`, as code does."""
    try:
        raise error
    except BaseException:
        logger.exception("step failed for job=%s", "abc")


def wrapped(wrapper: type[Exception], error: Exception) -> Exception:
    """A wrapper raised from `error`, as `raise X from error` makes it."""
    try:
        raise wrapper("could not finish") from error
    except wrapper as exc:
        return exc


# name -> (the fault as raised, the error the line must name)
EXPECTED_FAULTS: dict[str, tuple[BaseException, str]] = {
    "a cut stream": (StreamCut("audio stream cut: peer closed connection"), "StreamCut"),
    "a 5xx": (ServerError("Rime HTTP 503: Service unavailable", status=503), "ServerError"),
    "a 429": (
        RateLimited("Rime HTTP 429: Too many requests", status=429, retry_after=1.0),
        "RateLimited",
    ),
    "Redis away": (
        redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379."),
        "ConnectionError",
    ),
    "the broker away": (
        kombu.exceptions.OperationalError("[Errno 111] Connection refused"),
        "OperationalError",
    ),
    "the database away": (
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("gone")),
        "OperationalError",
    ),
    "Celery's retry of a Redis error": (
        Retry("Retry in 1s", redis.exceptions.ConnectionError("Connection reset by peer")),
        "ConnectionError: Connection reset by peer",
    ),
    "Celery's reject of a failed publish": (
        Reject(kombu.exceptions.OperationalError("[Errno 111] Connection refused"), requeue=False),
        "OperationalError: [Errno 111] Connection refused",
    ),
    "an error raised from a cut stream": (
        wrapped(RimeBatchError, StreamCut("stream cut")),
        "StreamCut: Rime: stream cut",
    ),
}


@pytest.mark.parametrize(("fault", "named"), EXPECTED_FAULTS.values(), ids=EXPECTED_FAULTS.keys())
def test_an_expected_fault_is_one_line_naming_it(
    logged: tuple[logging.Logger, io.StringIO], fault: BaseException, named: str
) -> None:
    logger, buffer = logged

    log_while_handling(logger, fault)

    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1, buffer.getvalue()
    assert lines[0].startswith("ERROR step failed for job=abc"), lines
    assert "Traceback" not in lines[0]
    assert named in lines[0], lines


@pytest.mark.parametrize(
    ("error", "while_handling_a_cut"),
    [
        (ValueError("a bug"), False),
        (KeyError("segment_pk"), False),
        (AuthError("Rime HTTP 401: Unauthorized", status=401), False),
        # An error raised while handling an expected one is still a bug.
        (ValueError("a bug in the handler"), True),
    ],
    ids=["ValueError", "KeyError", "a refused key", "raised while handling a cut stream"],
)
def test_anything_else_keeps_its_traceback(
    logged: tuple[logging.Logger, io.StringIO], error: BaseException, while_handling_a_cut: bool
) -> None:
    logger, buffer = logged
    try:
        if not while_handling_a_cut:
            raise error
        try:
            raise StreamCut("cut")
        except StreamCut:
            raise error  # noqa: B904 (the implicit context is the point)
    except BaseException:
        logger.exception("step failed")

    text = buffer.getvalue()
    assert "Traceback (most recent call last)" in text, text
    assert type(error).__name__ in text


def test_the_pipelines_expected_faults_are_the_workers_too() -> None:
    assert set(EXPECTED) <= set(WORKER_EXPECTED)


def test_a_worker_logs_celerys_task_errors_of_expected_faults_in_one_line() -> None:
    # Celery's own logging setup, as a worker runs it, then Celery's own loggers of task
    # errors: a rejected task whose retry could not be published, and a task that failed.
    script = textwrap.dedent(
        """
        import logging
        import kombu.exceptions
        from celery.exceptions import Reject
        from workers.app import app

        app.log.setup(loglevel="INFO", colorize=False)
        trace = logging.getLogger("celery.app.trace")
        try:
            try:
                raise kombu.exceptions.OperationalError("[Errno 111] Connection refused")
            except kombu.exceptions.OperationalError as exc:
                raise Reject(exc, requeue=False)
        except Reject:
            trace.warning("Task rime_batch.synthesize[1] rejected: %s", "Reject", exc_info=True)
        try:
            raise ZeroDivisionError("a bug")
        except ZeroDivisionError:
            trace.error("Task rime_batch.stitch[2] raised unexpected", exc_info=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    output = done.stdout + done.stderr
    rejected = [line for line in output.splitlines() if "rejected" in line]
    assert len(rejected) == 1, output
    assert "OperationalError" in rejected[0], output
    # One traceback: the bug's.
    assert output.count("Traceback (most recent call last)") == 1, output
    assert "ZeroDivisionError: a bug" in output
