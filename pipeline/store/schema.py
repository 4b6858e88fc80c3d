"""The job table's schema: jobs, scripts and segments, as SQLAlchemy Core tables.

Core rather than the ORM: every statement of the store is a plain insert, update or select,
the hot ones built once, and a command that only reads (`status`) need not import the ORM.

Each job, script and segment row carries one `State` of the shared state machine. Scripts keep
their synthesis parameters and output settings as JSON, so a resume rebuilds the plan without
the manifest.
Nothing here holds the API key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Double,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from pipeline.loudness import Loudness
from pipeline.store.states import State


@dataclass(frozen=True)
class OutputFile:
    """One encoded file of a stitched script."""

    format: str
    uri: str
    sha256: str
    bytes: int
    # What the file itself measures, when normalization is on (a captions file never does);
    # optional in the row's JSON, so rows written before it read back as unmeasured.
    loudness: Loudness | None = None

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> OutputFile:
        """An entry of a script row's `outputs`, as `dataclasses.asdict` wrote it."""
        loudness = entry.get("loudness")
        return cls(
            format=entry["format"],
            uri=entry["uri"],
            sha256=entry["sha256"],
            bytes=entry["bytes"],
            loudness=None if loudness is None else Loudness(**loudness),
        )


@dataclass(frozen=True)
class BookFile:
    """One file of an assembled book, at `key` in its release."""

    format: str  # m4b | mp3 | m3u
    key: str
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


def _required(name: str, kind: TypeEngine[Any], *extra: Any, **options: Any) -> Column[Any]:
    return Column(name, kind, *extra, nullable=False, **options)


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

# What a manifest renders at a destination, under its job name: every render of it is a job that
# writes a release (`releases/<job id>/`), and publishing one makes it the stable set.
PRODUCTIONS = Table(
    "productions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _required("name", Text()),
    _required("destination", Text()),
    _required("created_at", UTCDateTime()),
    # The job whose release the stable paths and the root results.json show, if any.
    _optional("published_job", String(12)),
    _optional("published_at", UTCDateTime()),
    UniqueConstraint("name", "destination"),
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
    # The production it renders a release of (None for jobs recorded before releases existed).
    Column(
        "production_id",
        Integer(),
        ForeignKey("productions.id", ondelete="CASCADE"),
        nullable=True,
    ),
    # How it was asked for: overrides (`set`, `voice_map`), `no_cache`, `publish` (auto or
    # manual), `notify` (webhook URLs), the schedule that submitted it.
    _optional("options", JSON()),
    _optional("published_at", UTCDateTime()),  # when its release was last published
    _optional("pruned_at", UTCDateTime()),  # when its release's files were deleted
    Index(None, "created_at"),
    # One production renders at a time: at most one unfinished job per production.
    Index(
        "uq_jobs_one_active_per_production",
        "production_id",
        unique=True,
        sqlite_where=text("state IN ('pending', 'running')"),
        postgresql_where=text("state IN ('pending', 'running')"),
    ),
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
    # One entry per encoded file: {format, uri, sha256, bytes, loudness} (see OutputFile).
    _required("outputs", JSON()),
    # What loudness normalization asked for and what the output furthest from the target
    # measures (dataclasses.asdict(LoudnessRecord)); None when normalization is off.
    _optional("loudness", JSON()),
    # Problems that did not fail the script (a loudness target missed), one line each.
    _optional("warnings", JSON()),
    _optional("error", Text()),
    _optional("started_at", UTCDateTime()),  # first segment claimed
    _optional("stitch_started_at", UTCDateTime()),
    _optional("finished_at", UTCDateTime()),
    *_claimed(),
    UniqueConstraint("job_id", "script_id"),
    UniqueConstraint("job_id", "position"),
)

# A job's book (`pipeline.book`), assembled from its stitched scripts before the job is done.
BOOKS = Table(
    "books",
    metadata,
    Column("job_id", String(12), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    _state(),
    _required("spec", JSON()),  # BookPlan.to_json()
    _optional("cover", LargeBinary()),  # the cover image as read when the job was planned
    # One entry per file: {format, key, uri, sha256, bytes} (see BookFile), once assembled.
    _required("outputs", JSON()),
    # Per chapter: {script_id, title, start_seconds, duration_seconds, mp3}, once assembled.
    _required("chapters", JSON()),
    _optional("error", Text()),
    _optional("started_at", UTCDateTime()),
    _optional("finished_at", UTCDateTime()),
    *_claimed(),
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
    # Sent with phonemizeBetweenBrackets: it holds phonemes a lexicon wrote (pipeline.plan).
    _required("phonemes", Boolean(), server_default=false()),
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

# A manifest rendered on a cron schedule.
SCHEDULES = Table(
    "schedules",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _required("name", Text()),
    _required("manifest", Text()),  # a path or an s3:// URI, read again at every run
    _required("cron", Text()),
    # Submitted with every run: overrides (`set`, `voice_map`), `publish`, `notify`.
    _required("options", JSON()),
    _required("only_if_changed", Boolean()),
    _required("created_at", UTCDateTime()),
    # The newest due time handled; the next run is the first cron time after it.
    _optional("last_due_at", UTCDateTime()),
    UniqueConstraint("name"),
)

# One due time of a schedule, handled once: the unique (schedule, due time) makes a second
# beat, or a restarted one, unable to submit it again.
SCHEDULE_RUNS = Table(
    "schedule_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _required("schedule_id", Integer(), ForeignKey("schedules.id", ondelete="CASCADE")),
    _required("due_at", UTCDateTime()),
    _required("created_at", UTCDateTime()),
    _required("outcome", String(16)),  # submitted, unchanged, failed
    _optional("job_id", String(12)),
    _optional("error", Text()),
    UniqueConstraint("schedule_id", "due_at"),
)

# A webhook event of a job's end, and its delivery.
DELIVERIES = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _required("job_id", String(12), ForeignKey("jobs.id", ondelete="CASCADE")),
    _required("url", Text()),
    _required("event", String(32)),  # job.published, job.done, job.failed, job.cancelled
    _required("body", Text()),  # the exact bytes sent (and signed), as UTF-8 JSON
    _required("state", String(16)),  # pending, delivered, failed
    _required("attempts", Integer()),
    _required("created_at", UTCDateTime()),
    _optional("next_attempt_at", UTCDateTime()),
    _optional("delivered_at", UTCDateTime()),
    _optional("last_status", Integer()),
    _optional("last_error", Text()),
    Index(None, "state", "next_attempt_at"),
)

# The service's API tokens: only a token's SHA-256 is stored; the token is shown once.
API_TOKENS = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _required("name", Text()),
    _required("token_hash", String(64)),
    _required("read_only", Boolean()),
    _required("created_at", UTCDateTime()),
    _optional("last_used_at", UTCDateTime()),
    _optional("revoked_at", UTCDateTime()),
    UniqueConstraint("name"),
    UniqueConstraint("token_hash"),
)

# An `Idempotency-Key` of a job creation: the unique key makes two concurrent POSTs of it
# create one job; `job_id` is filled once the job is recorded.
IDEMPOTENCY_KEYS = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(200), primary_key=True),
    _required("request_hash", String(64)),
    _required("created_at", UTCDateTime()),
    _optional("job_id", String(12)),
)

# A manifest sent in a request to the service, kept so that a re-render can plan it again.
JOB_MANIFESTS = Table(
    "job_manifests",
    metadata,
    Column("job_id", String(12), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    _required("body", Text()),
)
