"""The job table's schema: jobs, scripts and segments as SQLAlchemy models, one row class each.

Each row carries one `State` of the shared state machine. Scripts keep their synthesis
parameters and output settings as JSON, so a resume rebuilds the plan without the manifest.
Nothing here holds the API key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
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
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
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


def _state_column() -> Mapped[State]:
    # A VARCHAR with a CHECK constraint rather than a native PostgreSQL enum: no type object to
    # create, alter or drop in migrations, and the same DDL on SQLite.
    return mapped_column(
        Enum(
            State,
            name="state",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda states: [s.value for s in states],
            validate_strings=True,
        ),
        default=State.PENDING,
    )


class Base(DeclarativeBase):
    """Declarative base with the project's naming convention and column types."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, TypeEngine[Any]]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[float]: JSON(),
        list[dict[str, Any]]: JSON(),
        float: Double(),
        str: Text(),
    }


class JobRow(Base):
    """One run of a manifest."""

    __tablename__ = "jobs"

    # 12 hex characters: short enough to type on the command line, 48 random bits.
    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str]
    manifest: Mapped[str]
    destination: Mapped[str]
    state: Mapped[State] = _state_column()
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None]

    scripts: Mapped[list[ScriptRow]] = relationship(
        back_populates="job", order_by="ScriptRow.position", passive_deletes=True
    )

    __table_args__ = (Index(None, "created_at"),)


class ScriptRow(Base):
    """One script of a job: its parameters, its rollups, and its stitched outputs."""

    __tablename__ = "scripts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int]  # order of the script in the plan
    script_id: Mapped[str]  # the manifest's id
    state: Mapped[State] = _state_column()
    params: Mapped[dict[str, Any]]  # dataclasses.asdict(VoiceParams)
    output: Mapped[dict[str, Any]]  # dataclasses.asdict(OutputSpec)
    lead_pause_ms: Mapped[int]
    chars: Mapped[int]  # characters when every segment is synthesized once
    billed_chars: Mapped[int]  # characters of every attempt that reached the server
    audio_seconds: Mapped[float | None]
    # One entry per encoded file: {format, uri, sha256, bytes} (see pipeline.store.OutputFile).
    outputs: Mapped[list[dict[str, Any]]]
    error: Mapped[str | None]
    started_at: Mapped[datetime | None]  # first segment claimed
    stitch_started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    job: Mapped[JobRow] = relationship(back_populates="scripts")
    segments: Mapped[list[SegmentRow]] = relationship(
        back_populates="script", order_by="SegmentRow.index", passive_deletes=True
    )

    __table_args__ = (
        UniqueConstraint("job_id", "script_id"),
        UniqueConstraint("job_id", "position"),
    )


class SegmentRow(Base):
    """One request to Rime and its attempts."""

    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    script_pk: Mapped[int] = mapped_column(ForeignKey("scripts.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column("index", Integer)
    source: Mapped[str]  # exact slice of the script
    text: Mapped[str]  # the request text
    pause_after_ms: Mapped[int]
    inline_speed_alpha: Mapped[list[float]]
    cache_key: Mapped[str]
    chars: Mapped[int]
    state: Mapped[State] = _state_column()
    attempts: Mapped[int]
    billed_chars: Mapped[int]
    last_error: Mapped[str | None]
    audio_seconds: Mapped[float | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    script: Mapped[ScriptRow] = relationship(back_populates="segments")

    __table_args__ = (
        UniqueConstraint("script_pk", "index"),
        Index(None, "job_id", "state"),
    )


# The same tables without the ORM, for the statements every segment and script runs: a plain
# table's statement skips the ORM's bulk-update machinery.
JOBS = cast(Table, JobRow.__table__)
SCRIPTS = cast(Table, ScriptRow.__table__)
SEGMENTS = cast(Table, SegmentRow.__table__)
