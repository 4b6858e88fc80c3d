"""Opening the job table for a command: one line naming the database when it does not answer.

Every command that needs the job table (render, status, submit, cancel, worker) opens it here,
so a database that is down or a URL that is wrong reads the same everywhere: `cannot reach the
job table at postgresql+psycopg://db-host:5432/rime_batch: connection refused`, exit code 1,
never a driver's traceback and never the password.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError, SQLAlchemyError

from pipeline.errors import InputError, RimeBatchError, Unreachable, first_line, without_credentials
from pipeline.store import open_database

JOB_TABLE = "the job table"


def open_job_table(url: str, **pool: Any) -> Engine:
    """The job table at `url`, migrated (see `pipeline.store.open_database`); one-line errors."""
    try:
        return open_database(url, **pool)
    except ArgumentError as exc:
        raise InputError(f"DATABASE_URL: {first_line(exc)}") from None
    except (OperationalError, InterfaceError, OSError) as exc:
        raise Unreachable.because(JOB_TABLE, url, exc) from None
    except SQLAlchemyError as exc:  # it answered, but the schema could not be brought up to date
        where = without_credentials(url)
        raise RimeBatchError(f"cannot open {JOB_TABLE} at {where}: {first_line(exc)}") from None
