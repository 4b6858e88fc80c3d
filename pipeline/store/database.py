"""The job table's database: engines on SQLite or PostgreSQL, and migrations.

`open_database(url)` is what every process calls: it brings the schema up to date (Alembic, only
imported when the database is behind) and returns the engine.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection

if TYPE_CHECKING:
    from alembic.config import Config

# The newest migration: a database there needs no Alembic at all (importing it costs more than
# a `status` should). tests/integration/test_migrations.py checks it is Alembic's head.
HEAD_REVISION = "b7e4c2a9f013"
# The migrations live at the top of the source tree, next to alembic.ini.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Any constant works; it only has to be the same in every process that migrates.
_PG_MIGRATION_LOCK = 0x72696D65
# Alembic's `op` and `context` are module-level proxies: one command at a time per process.
_ALEMBIC_LOCK = threading.Lock()

# How long a SQLite writer waits for another one before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str | URL) -> URL:
    """The URL with PostgreSQL pointed at psycopg 3 (`postgresql://` means psycopg2 otherwise)."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


_BEGIN = "BEGIN IMMEDIATE"


class JobTableSQLite(SQLiteDialect_pysqlite):
    """SQLite as the job table uses it: WAL, foreign keys, a busy timeout, and every
    transaction begun IMMEDIATE.

    A dialect of its own rather than event listeners: one listener of a connection's events
    makes SQLAlchemy dispatch them around every statement, a tenth of a short transaction.
    """

    supports_statement_cache = True

    def on_connect(self) -> Callable[[Any], None]:
        """The driver's own set-up, then ours, on every new connection."""
        driver_setup = super().on_connect()

        def setup(dbapi_connection: Any) -> None:
            driver_setup(dbapi_connection)
            # Take BEGIN away from the sqlite3 driver (it skips it before SELECTs); `do_begin`
            # sends our own.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                # WAL lets readers (a status table) run while a worker writes.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                cursor.execute("PRAGMA synchronous=NORMAL")
            finally:
                cursor.close()

        return setup

    def do_begin(self, dbapi_connection: PoolProxiedConnection) -> None:
        """BEGIN IMMEDIATE, on the driver's own connection."""
        # IMMEDIATE takes the write lock up front, waiting out the busy timeout. A deferred
        # transaction that reads and then writes fails at once with SQLITE_BUSY when another
        # writer committed in between, and waiting would not help it. Sent on the driver's
        # connection: through SQLAlchemy's statement machinery it cost a third of an empty
        # transaction, and every segment runs several.
        try:
            dbapi_connection.dbapi_connection.execute(_BEGIN)  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            # As SQLAlchemy raises it for a statement of its own ("database is locked" is an
            # OperationalError, which the workers retry).
            raise DBAPIError.instance(_BEGIN, (), exc, sqlite3.Error) from exc


# What a SQLite URL is opened with (its driver is still the standard library's sqlite3).
_DRIVER = "sqlite+rime_batch"
registry.register("sqlite.rime_batch", __name__, JobTableSQLite.__name__)


def holds_write_lock(conn: Connection) -> bool:
    """Whether this transaction has held the whole database's write lock since it began
    (`JobTableSQLite`): a statement run only to lock a row adds nothing."""
    return isinstance(conn.dialect, JobTableSQLite)


def create_engine_for(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys, a busy timeout and IMMEDIATE begins."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(parsed, **kwargs)
    if (
        parsed.database
        and parsed.database != ":memory:"
        and not parsed.database.startswith("file:")
    ):
        # The default file lives in the user's data folder, which a fresh account lacks.
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(parsed.set(drivername=_DRIVER), **kwargs)


def open_database(url: str | URL, **engine_options: Any) -> Engine:
    """The job table at `url`, its schema migrated to the newest revision first.

    Use `with db.begin() as conn:` for each unit of work; `db.dispose()` closes it.
    """
    engine = create_engine_for(url, **engine_options)
    if not _at_head(engine):
        migrate(url)
    return engine


def _at_head(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            stored = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError:
        return False  # no version table yet: a new database
    return [row[0] for row in stored] == [HEAD_REVISION]


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config whose env.py runs on `connection` (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(url: str | URL, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (the newest by default)."""
    from alembic import command

    engine = create_engine_for(url)
    try:
        with _ALEMBIC_LOCK, engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Workers starting together must not race to create the same tables.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
            command.upgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()


def downgrade(url: str | URL, revision: str = "base") -> None:
    """Downgrade the database at `url` to `revision` (an empty schema by default)."""
    from alembic import command

    engine = create_engine_for(url)
    try:
        with _ALEMBIC_LOCK, engine.begin() as connection:
            command.downgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()
