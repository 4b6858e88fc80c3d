"""Alembic, driven from code: upgrade a database to the models' schema."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL

from pipeline.store.db import create_engine_for

# The migrations live at the top of the source tree, next to alembic.ini.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

# Any constant works; it only has to be the same in every process that migrates.
_PG_MIGRATION_LOCK = 0x72696D65

# Alembic's `op` and `context` are module-level proxies: one command at a time per process.
_ALEMBIC_LOCK = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config whose env.py runs on `connection` (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(url: str | URL, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (the newest by default)."""
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
    engine = create_engine_for(url)
    try:
        with _ALEMBIC_LOCK, engine.begin() as connection:
            command.downgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()
