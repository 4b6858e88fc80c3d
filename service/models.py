"""The API's JSON shapes. The OpenAPI schema at /v1/openapi.json is written from these.

Built from the store's own dataclasses (`views.JobSummary`, `productions.Release`, ...), never
from rows: what `status` shows and what the API returns are the same figures. No shape carries
the Rime API key or a token; an output is named by its API URL, not its place on this machine.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

from pipeline.loudness import Loudness, LoudnessRecord
from pipeline.store.deliveries import DeliveryStatus
from pipeline.store.productions import Release
from pipeline.store.schedules import Run, Schedule
from pipeline.store.views import JobStatus, JobSummary, ScriptStatus


class ErrorBody(BaseModel):
    """What went wrong: a stable code, a sentence, and the field (or header) at fault."""

    code: str
    message: str
    field: str | None = None
    file: str | None = None
    line: int | None = None
    row: int | None = None


class ErrorOut(BaseModel):
    """Every error response."""

    error: ErrorBody


class Options(BaseModel):
    """How a job was asked for beyond its manifest."""

    set: list[str]
    voice_map: list[str]
    no_cache: bool
    publish: Literal["auto", "manual"]
    notify: int = Field(description="How many webhooks it tells (their URLs may hold tokens)")
    schedule: str | None
    keep_releases: int


class JobOut(BaseModel):
    """A job's state and totals."""

    id: str
    name: str
    destination: str
    state: str
    interrupted: bool = Field(description="Running, but its executor stopped: resume it")
    published: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    scripts: int
    scripts_done: int
    progress: float = Field(description="Scripts done of all, 0 to 1")
    chars: int
    billed_chars: int
    audio_seconds: float
    options: Options

    @classmethod
    def of(cls, job: JobStatus) -> JobOut:
        """The shape of a status row."""
        o = job.options
        return cls(
            id=job.job_id,
            name=job.name,
            destination=job.destination,
            state=job.state.value,
            interrupted=job.interrupted,
            published=job.published,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            error=job.error,
            scripts=job.scripts,
            scripts_done=job.scripts_done,
            progress=job.scripts_done / job.scripts if job.scripts else 1.0,
            chars=job.chars,
            billed_chars=job.billed_chars,
            audio_seconds=round(job.audio_seconds, 3),
            options=Options(
                set=[f"{k}={v}" for k, v in o.set],
                voice_map=[f"{k}={v}" for k, v in o.voice_map],
                no_cache=o.no_cache,
                publish=o.publish.value,
                notify=len(o.notify),
                schedule=o.schedule,
                keep_releases=o.keep_releases,
            ),
        )


class OutputOut(BaseModel):
    """One encoded file of a script, served at `url`."""

    format: str
    sha256: str
    bytes: int
    url: str
    loudness: Loudness | None = Field(
        None, description="What this file measures; only when a loudness target is set"
    )


class ScriptOut(BaseModel):
    """One script of a job."""

    id: str
    state: str
    segments: int
    segments_done: int
    segments_failed: int
    attempts: int
    chars: int
    billed_chars: int
    audio_seconds: float | None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    outputs: list[OutputOut]
    loudness: LoudnessRecord | None = Field(
        None, description="Measured as it was encoded; only when a loudness target is set"
    )
    warnings: list[str] = Field(default_factory=list, description="e.g. a missed loudness target")

    @classmethod
    def of(cls, job_id: str, script: ScriptStatus) -> ScriptOut:
        """The shape of a script's status line."""
        return cls(
            id=script.script_id,
            state=script.state.value,
            segments=script.segments,
            segments_done=script.segments_done,
            segments_failed=script.segments_failed,
            attempts=script.attempts,
            chars=script.chars,
            billed_chars=script.billed_chars,
            audio_seconds=script.audio_seconds,
            error=script.error,
            started_at=script.started_at,
            finished_at=script.finished_at,
            outputs=[
                OutputOut(
                    format=o.format,
                    sha256=o.sha256,
                    bytes=o.bytes,
                    url=output_url(job_id, script.script_id, o.format),
                    loudness=o.loudness,
                )
                for o in script.outputs
            ],
            loudness=script.loudness,
            warnings=list(script.warnings),
        )


def output_url(job_id: str, script_id: str, fmt: str) -> str:
    """Where the API serves one output."""
    return f"/v1/jobs/{job_id}/outputs/{quote(fmt)}/{quote(script_id)}"


class JobDetail(BaseModel):
    """A job with every script, in plan order."""

    job: JobOut
    scripts: list[ScriptOut]

    @classmethod
    def of(cls, summary: JobSummary) -> JobDetail:
        """The shape of a job's summary."""
        job_id = summary.job.job_id
        return cls(
            job=JobOut.of(summary.job), scripts=[ScriptOut.of(job_id, s) for s in summary.scripts]
        )


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobOut]
    next_offset: int | None = Field(description="Pass as `offset` for the next page")


class Created(BaseModel):
    """A job made (or, for a repeated Idempotency-Key, the one made before)."""

    job: JobOut


class ReleaseOut(BaseModel):
    """One release (job) of a production."""

    job_id: str
    state: str
    created_at: datetime
    finished_at: datetime | None
    published_at: datetime | None
    pruned: bool
    scripts: int
    billed_chars: int
    voices: list[str]
    published: bool

    @classmethod
    def of(cls, release: Release) -> ReleaseOut:
        """The shape of a release line."""
        return cls(
            job_id=release.job_id,
            state=release.state.value,
            created_at=release.created_at,
            finished_at=release.finished_at,
            published_at=release.published_at,
            pruned=release.pruned_at is not None,
            scripts=release.scripts,
            billed_chars=release.billed_chars,
            voices=list(release.voices),
            published=release.published,
        )


class ReleasePage(BaseModel):
    """A production's releases, newest first."""

    production: str
    destination: str
    items: list[ReleaseOut]
    next_offset: int | None


class PublishIn(BaseModel):
    """Which release to publish."""

    release: str = Field(description="A release (job) id or prefix")
    destination: str | None = Field(None, description="When the name renders to several")


class RollbackIn(BaseModel):
    """Which release to publish again (default: the one published before the current)."""

    release: str | None = None
    destination: str | None = None


class PublishedOut(BaseModel):
    """What a publish did."""

    production: str
    destination: str
    release: str
    previous: str | None
    outputs: int
    removed: int
    pruned: list[str]


class ScriptEdit(BaseModel):
    """One script's text or speaker changed by hand for a re-render (the manifest keeps its
    own: a later render of the manifest says it as the manifest does)."""

    script: str
    text: str | None = None
    speaker: str | None = None


class RerenderIn(BaseModel):
    """A new release of a job's manifest: all scripts, or only some, with overrides."""

    scripts: list[str] | None = Field(
        None,
        description="Only these scripts change; the others are taken as the job planned them "
        "(from the segment cache). Default: every script.",
    )
    set: list[str] = Field(default_factory=list, description="`key=value`, as --set")
    voice_map: list[str] = Field(default_factory=list, description="`old=new`, as --voice-map")
    publish: Literal["auto", "manual"] | None = Field(None, description="Default: the job's")
    edits: list[ScriptEdit] = Field(
        default_factory=list, description="Scripts whose text or speaker change (with `scripts`)"
    )


class ScheduleIn(BaseModel):
    """A schedule of a manifest in the service's root folder."""

    name: str
    manifest: str = Field(description="A path relative to the service's root folder")
    cron: str = Field(description="UTC; 5 fields, or 6 with seconds last, or @daily and such")
    only_if_changed: bool = False
    publish: Literal["auto", "manual"] = "auto"
    output: str | None = None
    set: list[str] = Field(default_factory=list)
    voice_map: list[str] = Field(default_factory=list)
    notify: list[str] = Field(default_factory=list)


class RunOut(BaseModel):
    """One handled due time of a schedule."""

    due_at: datetime
    outcome: str
    job_id: str | None
    error: str | None

    @classmethod
    def of(cls, run: Run) -> RunOut:
        """The shape of a run."""
        return cls(due_at=run.due_at, outcome=run.outcome.value, job_id=run.job_id, error=run.error)


class ScheduleOut(BaseModel):
    """A schedule, when it is next due (UTC) and its last run."""

    name: str
    manifest: str
    cron: str
    only_if_changed: bool
    output: str | None
    publish: str
    next_due: datetime
    last_run: RunOut | None

    @classmethod
    def of(cls, schedule: Schedule, manifest: str, last: Run | None) -> ScheduleOut:
        """The shape of a schedule; `manifest` as the client named it."""
        from pipeline.schedules import next_due

        return cls(
            name=schedule.name,
            manifest=manifest,
            cron=schedule.cron,
            only_if_changed=schedule.only_if_changed,
            output=schedule.output,
            publish=schedule.options.publish.value,
            next_due=next_due(schedule.cron, schedule.since),
            last_run=RunOut.of(last) if last is not None else None,
        )


class SchedulePage(BaseModel):
    """Every schedule."""

    items: list[ScheduleOut]


class DeliveryOut(BaseModel):
    """One webhook delivery of a job's end (its URL shown as scheme://host/…)."""

    id: int
    event: str
    url: str
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None

    @classmethod
    def of(cls, d: DeliveryStatus) -> DeliveryOut:
        """The shape of a delivery line."""
        return cls(
            id=d.delivery_id,
            event=d.event,
            url=d.url,
            state=d.state.value,
            attempts=d.attempts,
            created_at=d.created_at,
            next_attempt_at=d.next_attempt_at,
            delivered_at=d.delivered_at,
            last_status=d.last_status,
            last_error=d.last_error,
        )


class DeliveryPage(BaseModel):
    """A job's webhook deliveries."""

    items: list[DeliveryOut]


class Health(BaseModel):
    """Alive, and how jobs run."""

    status: Literal["ok"]
    version: str
    executor: str


class Ready(BaseModel):
    """Whether each part the service needs answers (`null`: fine, else why not)."""

    ready: bool
    database: str | None
    broker: str | None
    storage: str | None
