"""The job table's schema: jobs, scripts and segments, as SQLAlchemy Core tables.

Core rather than the ORM: every statement of the store is a plain insert, update or select,
the hot ones built once, and a command that only reads (`status`) need not import the ORM.

Each job, script and segment row carries one `State` of the shared state machine. Scripts keep
their synthesis parameters and output settings as JSON, so a resume rebuilds the plan without
the manifest.
Nothing here holds the API key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Double,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from pipeline.store.states import State


@dataclass(frozen=True)
class OutputFile:
    """One encoded file of a stitched script."""

    format: str
    uri: str
    sha256: str
    bytes: int


# Deterministic constraint names: SQLite batch migrations and downgrades refer to them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _state() -> Column[State]:
    # A VARCHAR with a CHECK constraint rather than a native PostgreSQL enum: no type object to
    # create, alter or drop in migrations, and the same DDL on SQLite.
    return Column(
        "state",
        Enum(
            State,
            name="state",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda states: [s.value for s in states],
            validate_strings=True,
        ),
        nullable=False,
        default=State.PENDING,
    )


def _required(name: str, kind: TypeEngine[Any], *extra: Any) -> Column[Any]:
    return Column(name, kind, *extra, nullable=False)


def _optional(name: str, kind: TypeEngine[Any]) -> Column[Any]:
    return Column(name, kind, nullable=True)


def _claimed() -> tuple[Column[Any], Column[Any]]:
    # Who holds a running row: the claim's own token (compared by every change that ends the
    # claim) and its executor, alive while that executor's heartbeat is fresh.
    return _optional("claim", String(40)), _optional("executor", String(16))


metadata = MetaData(naming_convention=NAMING_CONVENTION)

# A process that claims work: a `render` (or `resume`) or a worker. It beats `heartbeat_at`
# while it runs and deletes its row when it stops cleanly.
EXECUTORS = Table(
    "executors",
    metadata,
    Column("id", String(16), primary_key=True),
    _required("kind", String(16)),  # "render" or "worker"
    _required("host", Text()),
    _required("pid", Integer()),
    _required("started_at", UTCDateTime()),
    _required("heartbeat_at", UTCDateTime()),
)

# One run of a manifest.
JOBS = Table(
    "jobs",
    metadata,
    # 12 hex characters: short enough to type on the command line, 48 random bits.
    Column("id", String(12), primary_key=True),
    _required("name", Text()),
    _required("manifest", Text()),
    _required("destination", Text()),
    _state(),
    _required("created_at", UTCDateTime()),
    _optional("started_at", UTCDateTime()),
    _optional("finished_at", UTCDateTime()),
    _optional("error", Text()),
    # The render process running it; None when the workers serve it (any live worker will do).
    _optional("executor", String(16)),
    Index(None, "created_at"),
)

# One script of a job: its parameters, its rollups, and its stitched outputs.
SCRIPTS = Table(
    "scripts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _required("job_id", String(12), ForeignKey("jobs.id", ondelete="CASCADE")),
    _required("position", Integer()),  # order of the script in the plan
    _required("script_id", Text()),  # the manifest's id
    _state(),
    _required("params", JSON()),  # dataclasses.asdict(VoiceParams)
    _required("output", JSON()),  # dataclasses.asdict(OutputSpec)
    _required("lead_pause_ms", Integer()),
    _required("chars", Integer()),  # characters when every segment is synthesized once
    _required("billed_chars", Integer()),  # characters of every attempt that reached the server
    _optional("audio_seconds", Double()),
    # One entry per encoded file: {format, uri, sha256, bytes} (see OutputFile).
    _required("outputs", JSON()),
    _optional("error", Text()),
    _optional("started_at", UTCDateTime()),  # first segment claimed
    _optional("stitch_started_at", UTCDateTime()),
    _optional("finished_at", UTCDateTime()),
    *_claimed(),
    UniqueConstraint("job_id", "script_id"),
    UniqueConstraint("job_id", "position"),
)

# One request to Rime and its attempts.
SEGMENTS = Table(
    "segments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _required("job_id", String(12), ForeignKey("jobs.id", ondelete="CASCADE")),
    _required("script_pk", Integer(), ForeignKey("scripts.id", ondelete="CASCADE")),
    _required("index", Integer()),
    _required("source", Text()),  # exact slice of the script
    _required("text", Text()),  # the request text
    _required("pause_after_ms", Integer()),
    _required("inline_speed_alpha", JSON()),
    _required("cache_key", Text()),
    _required("chars", Integer()),
    _state(),
    _required("attempts", Integer()),
    _required("billed_chars", Integer()),
    _optional("last_error", Text()),
    _optional("audio_seconds", Double()),
    _optional("started_at", UTCDateTime()),
    _optional("finished_at", UTCDateTime()),
    *_claimed(),
    UniqueConstraint("script_pk", "index"),
    Index(None, "job_id", "state"),
)
