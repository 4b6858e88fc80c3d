"""The stages of a job, shared by every executor: synthesize a segment, stitch a script, settle.

Each stage takes row ids, claims its work in the job table (so two executors never do the same
work), does it, and records the outcome. The embedded executor (`pipeline.run`) and the Celery
tasks (`workers.tasks`) are thin loops around these functions.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tempfile
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.errors import RimeBatchError
from pipeline.limits import Limiter
from pipeline.plan import PlannedSegment
from pipeline.retry import DEFAULT_POLICY, RetryPolicy
from pipeline.rime.audio import parse_wav
from pipeline.rime.errors import AuthError, RimeError, StreamCut
from pipeline.rime.params import TtsRequest
from pipeline.stitch import parts_for, spec_for, stitch
from pipeline.storage import ObjectStore, cache_key_path, content_type_for, open_store
from pipeline.storage import output_metadata as make_metadata
from pipeline.store import OutputFile, plans, queries, repo
from pipeline.store.models import Job
from pipeline.store.states import State
from pipeline.synth import Attempt, Synthesizer, synthesize_segment

log = logging.getLogger(__name__)

RESULTS_KEY = "results.json"


class Outcome(StrEnum):
    """What a stage did."""

    SYNTHESIZED = "synthesized"  # audio requested from Rime
    CACHED = "cached"  # the audio was already in the segment cache
    FAILED = "failed"  # given up for good; the script fails with it
    REFUSED = "refused"  # Rime refused the API key: no other request can succeed either
    SKIPPED = "skipped"  # someone else holds it, or it is no longer pending
    STITCHED = "stitched"


# Outcomes after which a script cannot be stitched in this run.
FAILURES = (Outcome.FAILED, Outcome.REFUSED)
# Why the scripts left unsent after a 401 failed.
KEY_REFUSED = "not sent: Rime refused the API key"


@dataclass(frozen=True)
class Event:
    """Progress for a display or a log line."""

    kind: str  # "segment", "attempt", "script"
    job_id: str
    script_id: str
    outcome: str
    chars: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Context:
    """Everything the stages need, built once per executor."""

    sessions: sessionmaker[Session]
    client: Synthesizer
    limiter: Limiter
    policy: RetryPolicy = DEFAULT_POLICY
    on_event: Callable[[Event], None] = lambda _: None
    # Audio from different synthesizers never shares a cache entry: a render against the local
    # engine must not be shipped later as if Rime had spoken it.
    cache_namespace: str = ""
    _stores: dict[str, ObjectStore] = field(default_factory=dict)

    def cache_path(self, cache_key: str) -> str:
        """Where a segment's audio is cached in the destination."""
        return cache_key_path(
            f"{self.cache_namespace}-{cache_key}" if self.cache_namespace else cache_key
        )

    def store(self, destination: str) -> ObjectStore:
        """The object store of a destination, opened once."""
        if destination not in self._stores:
            self._stores[destination] = open_store(destination)
        return self._stores[destination]


def pcm_to_wav(pcm: bytes, sampling_rate: int) -> bytes:
    """16-bit mono PCM wrapped in a WAV header, the segment cache's format."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sampling_rate)
        out.writeframes(pcm)
    return buffer.getvalue()


async def synth_stage(ctx: Context, segment_id: int) -> Outcome:
    """Claim one pending segment, take its audio from the cache or from Rime, record it."""
    with ctx.sessions.begin() as session:
        if not repo.claim_segment(session, segment_id):
            return Outcome.SKIPPED
        work = plans.load_segment(session, segment_id)
        # Only the destination: loading the whole script would read every one of its segments.
        destination = session.scalars(select(Job.destination).where(Job.id == work.job_id)).one()
    store = ctx.store(destination)
    key = ctx.cache_path(work.segment.cache_key)
    event = Event("segment", work.job_id, work.script_id, "", chars=work.segment.chars)
    try:
        cached_seconds = await asyncio.to_thread(_cached_seconds, store, key)
        if cached_seconds is not None:
            seconds, outcome = cached_seconds, Outcome.CACHED
        else:
            seconds = await _synthesize_into(ctx, store, key, work, event)
            outcome = Outcome.SYNTHESIZED
    except (RimeBatchError, OSError) as exc:
        # Rime's refusals, but also a destination that cannot be written: the segment fails
        # with one clear message instead of taking the whole run down.
        error = str(exc) if isinstance(exc, RimeError) else f"storing audio failed: {exc}"
        with ctx.sessions.begin() as session:
            repo.fail_segment(session, segment_id, error)
        ctx.on_event(replace(event, outcome=Outcome.FAILED, error=error))
        return Outcome.REFUSED if isinstance(exc, AuthError) else Outcome.FAILED
    except BaseException:
        # Interrupted (Ctrl-C, a cancelled task): hand the segment back for a resume.
        with ctx.sessions.begin() as session:
            repo.release_segment(session, segment_id, "interrupted")
        raise
    with ctx.sessions.begin() as session:
        repo.finish_segment(session, segment_id, audio_seconds=seconds)
    ctx.on_event(replace(event, outcome=outcome, seconds=seconds))
    return outcome


def _cached_seconds(store: ObjectStore, key: str) -> float | None:
    """The duration of a cached segment, or None on a miss; a damaged entry counts as a miss."""
    if not store.exists(key):
        return None
    try:
        return parse_wav(store.get_bytes(key)).duration
    except StreamCut as exc:
        # Content-addressed: left in place, a damaged file would fail this segment forever.
        log.warning("cached segment %s is damaged (%s); synthesizing it again", key, exc)
        store.delete(key)
        return None


async def _synthesize_into(
    ctx: Context, store: ObjectStore, key: str, work: plans.SegmentWork, event: Event
) -> float:
    params = work.params

    def record(attempt: Attempt) -> None:
        with ctx.sessions.begin() as session:
            repo.record_attempt(
                session,
                work.segment_id,
                billed_chars=attempt.billed_chars,
                error=attempt.error,
            )
        # A permanent error is reported once, by the segment's failure, not as a retry.
        if attempt.error is not None and attempt.retryable:
            ctx.on_event(replace(event, kind="attempt", outcome="retry", error=attempt.error))

    req = TtsRequest.from_plan(params, work.segment.text, work.segment.inline_speed_alpha)
    result = await synthesize_segment(
        ctx.client,
        ctx.limiter,
        req,
        sampling_rate=params.sampling_rate,
        policy=ctx.policy,
        on_attempt=record,
    )
    wav = pcm_to_wav(result.pcm, result.sampling_rate)
    await asyncio.to_thread(store.put_bytes, key, wav, content_type="audio/wav")
    return result.seconds


def stitch_stage(ctx: Context, script_pk: int) -> Outcome:
    """Stitch a script whose segments are all done: exactly one caller wins the claim."""
    with ctx.sessions.begin() as session:
        if not repo.claim_stitch(session, script_pk):
            return Outcome.SKIPPED
        work = plans.load_script(session, script_pk)
    plan = work.plan
    store = ctx.store(work.destination)
    try:
        with tempfile.TemporaryDirectory(prefix="rime-batch-") as tmp:
            folder = Path(tmp)

            def fetch(segment: PlannedSegment) -> Path:
                target = folder / "segments" / f"{segment.index:06d}.wav"
                return store.get_to_file(ctx.cache_path(segment.cache_key), target)

            parts = parts_for(plan, fetch)
            result = stitch(parts, spec_for(plan, folder / "out", stem="output"))
            outputs = []
            for fmt, stitched in result.files.items():
                key = plan.script_id + stitched.path.name.removeprefix("output")
                metadata = make_metadata(
                    work.job_id,
                    plan.params.speaker,
                    plan.params.model_id,
                    stitched.duration_seconds,
                    stitched.sha256,
                )
                uri = store.put_file(
                    key, stitched.path, content_type=content_type_for(fmt), metadata=metadata
                )
                outputs.append(OutputFile(fmt, uri, stitched.sha256, stitched.size_bytes))
    except Exception as exc:
        with ctx.sessions.begin() as session:
            repo.fail_script(session, script_pk, f"stitching failed: {exc}")
        ctx.on_event(Event("script", work.job_id, plan.script_id, Outcome.FAILED, error=str(exc)))
        return Outcome.FAILED
    except BaseException:
        with ctx.sessions.begin() as session:
            repo.release_script(session, script_pk)
        raise
    with ctx.sessions.begin() as session:
        repo.finish_script(
            session,
            script_pk,
            audio_seconds=result.duration_seconds,
            outputs=outputs,
        )
    ctx.on_event(
        Event(
            "script",
            work.job_id,
            plan.script_id,
            Outcome.STITCHED,
            plan.chars,
            result.duration_seconds,
        )
    )
    return Outcome.STITCHED


def abandon_stage(ctx: Context, job_id: str, reason: str) -> int:
    """Fail every script of the job still waiting, sending nothing; returns how many."""
    with ctx.sessions.begin() as session:
        waiting = [
            s.script_pk
            for s in queries.job_summary(session, job_id).scripts
            if s.state is State.PENDING
        ]
        # Their segments stay pending: never tried, and a resume picks them up.
        return sum(repo.fail_script(session, script_pk, reason) for script_pk in waiting)


def settle_stage(ctx: Context, job_id: str) -> State:
    """Roll the job's state up and write its results file; returns the job's state."""
    with ctx.sessions.begin() as session:
        state = repo.settle_job(session, job_id)
        summary = queries.job_summary(session, job_id)
    if state in (State.DONE, State.FAILED):
        store = ctx.store(summary.job.destination)
        store.put_bytes(
            RESULTS_KEY,
            json.dumps(results_document(summary), indent=2).encode(),
            content_type="application/json",
        )
    return state


def results_document(summary: queries.JobSummary) -> dict[str, object]:
    """The job's results file: per script its outputs, duration, checksum and billing."""
    job = summary.job
    return {
        "job_id": job.job_id,
        "name": job.name,
        "state": job.state.value,
        "manifest": job.manifest,
        "destination": job.destination,
        "chars": job.chars,
        "billed_chars": job.billed_chars,
        "audio_seconds": round(job.audio_seconds, 3),
        "scripts": [
            {
                "id": s.script_id,
                "state": s.state.value,
                "outputs": [asdict(o) for o in s.outputs],
                "audio_seconds": None if s.audio_seconds is None else round(s.audio_seconds, 3),
                "chars": s.chars,
                "billed_chars": s.billed_chars,
                "attempts": s.attempts,
                "error": s.error,
            }
            for s in summary.scripts
        ],
    }
