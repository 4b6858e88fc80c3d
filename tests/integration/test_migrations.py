"""Alembic on real SQLite and real PostgreSQL: the migrations build exactly the models."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from pipeline.store import create_engine_for, downgrade, migrate, open_database
from pipeline.store.database import HEAD_REVISION, MIGRATIONS_DIR, alembic_config
from pipeline.store.schema import metadata

ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "jobs",
    "scripts",
    "segments",
    "executors",
    "productions",
    "schedules",
    "schedule_runs",
    "deliveries",
    "books",
    "api_tokens",
    "idempotency_keys",
    "job_manifests",
}


def tables(url: str) -> set[str]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            return set(sa.inspect(connection).get_table_names())
    finally:
        engine.dispose()


def head() -> str:
    config = alembic_config()
    revision = ScriptDirectory.from_config(config).get_current_head()
    assert revision is not None
    return revision


def test_upgrade_head_builds_exactly_the_models(database_url: str) -> None:
    migrate(database_url)
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
            assert context.get_current_revision() == head()
            # `alembic check` goes through env.py as CI would.
            command.check(alembic_config(connection))
            assert set(sa.inspect(connection).get_table_names()) == TABLES | {"alembic_version"}
    finally:
        engine.dispose()


def test_the_version_table_lands_in_the_test_schema(postgres_url: str) -> None:
    migrate(postgres_url)
    engine = create_engine_for(postgres_url)
    try:
        with engine.connect() as connection:
            schema = connection.execute(sa.text("SELECT current_schema()")).scalar_one()
            found = connection.execute(
                sa.text(
                    "SELECT table_schema FROM information_schema.tables"
                    " WHERE table_name = 'alembic_version' AND table_schema = :schema"
                ),
                {"schema": schema},
            ).all()
    finally:
        engine.dispose()
    assert schema.startswith("t_")
    assert found == [(schema,)]


def test_downgrade_base_removes_everything_and_upgrade_rebuilds(database_url: str) -> None:
    migrate(database_url)
    downgrade(database_url)
    assert tables(database_url) & TABLES == set()
    migrate(database_url)
    migrate(database_url)  # already at head: nothing to do, no error
    assert tables(database_url) >= TABLES


def test_workers_migrating_at_once_all_succeed(postgres_url: str) -> None:
    # Separate processes, as worker processes starting together would be.
    code = "import sys; from pipeline.store import migrate; migrate(sys.argv[1])"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, postgres_url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [(w.wait(timeout=120), w.communicate()[1]) for w in workers]
    assert [code for code, _ in outcomes] == [0, 0, 0], [err for _, err in outcomes]
    assert tables(postgres_url) >= TABLES


def test_threads_migrating_at_once_all_succeed(database_url: str) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        for future in [pool.submit(migrate, database_url) for _ in range(3)]:
            future.result()
    assert tables(database_url) >= TABLES


def test_the_code_knows_the_newest_revision() -> None:
    # open_database skips Alembic for a database at HEAD_REVISION: it must be Alembic's head.
    assert head() == HEAD_REVISION


def test_open_database_migrates_a_new_or_old_database_and_leaves_a_current_one(
    database_url: str,
) -> None:
    db = open_database(database_url)
    with db.begin() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [
            (HEAD_REVISION,)
        ]
    downgrade(database_url)
    assert tables(database_url) & TABLES == set()
    open_database(database_url)  # behind: migrated again
    assert tables(database_url) >= TABLES


def test_revision_files_carry_their_date() -> None:
    names = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("*.py"))
    assert names, "no revisions"
    for name in names:
        assert name[:8].isdigit() and name[8] == "_", name


def test_alembic_command_line_uses_database_url(sqlite_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": sqlite_url}
    for args in (["upgrade", "head"], ["check"], ["current"]):
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    assert head() in done.stdout
    assert tables(sqlite_url) >= TABLES


def _script_columns(url: str) -> set[str]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            return {c["name"] for c in sa.inspect(connection).get_columns("scripts")}
    finally:
        engine.dispose()


def test_script_loudness_and_warnings_come_and_go_with_their_revision(database_url: str) -> None:
    migrate(database_url, "9d2f6a8c1e35")
    assert {"loudness", "warnings"} & _script_columns(database_url) == set()
    migrate(database_url)
    assert {"loudness", "warnings"} <= _script_columns(database_url)
    downgrade(database_url, "9d2f6a8c1e35")
    assert {"loudness", "warnings"} & _script_columns(database_url) == set()
    assert "outputs" in _script_columns(database_url)
