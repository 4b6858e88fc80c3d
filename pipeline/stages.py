"""The stages of a job, the one seam between executors: synthesize, stitch, settle.

Each stage takes a row id, claims its work in the job table (so two executors never do the same
work), does it, records the outcome, and returns what the store says comes next (a `Next`: a
script to stitch, a job to settle, or nothing). The embedded executor (`pipeline.run`) schedules
coroutines on that answer and the Celery tasks (`workers.flow`) send tasks on it; neither
decides anything about the work itself.

A refused API key (401) is handled here for every executor: the segment fails, and so does every
script of its job still waiting, so no other request is sent with that key (their segments stay
pending for a resume with a good key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from sqlalchemy import Engine

from pipeline import wav
from pipeline.book import CONTENT_TYPES as BOOK_CONTENT_TYPES
from pipeline.book import Assembled, ChapterSource, assemble, decode_to_wav
from pipeline.captions import caption_texts, programme_words, sidecar
from pipeline.errors import RimeBatchError
from pipeline.executor import Executor
from pipeline.files import atomic_write, sha256_file
from pipeline.limits import Limiter
from pipeline.notify import ENDED_IN, JobEvent, job_ended
from pipeline.plan import PlannedSegment, ScriptPlan
from pipeline.publish import publish_when_due
from pipeline.results import results_bytes, seconds
from pipeline.retry import DEFAULT_POLICY, RetryPolicy
from pipeline.rime.checks import parse_wav
from pipeline.rime.errors import AuthError, PermanentError, RimeError, StreamCut
from pipeline.rime.events import WordTimestamp
from pipeline.rime.params import TtsRequest
from pipeline.stitch import Part, StitchResult, parts_for, spec_for, stitch
from pipeline.storage import (
    OUTPUT_EXTENSIONS,
    ObjectNotFound,
    ObjectStore,
    content_type_for,
    open_store,
    output_key,
    release_key,
)
from pipeline.storage import output_metadata as make_metadata
from pipeline.storage.keys import RESULTS_KEY, namespaced_cache_path, words_path
from pipeline.store import OutputFile, State, plans, transitions, views
from pipeline.store.schema import BookFile
from pipeline.store.transitions import NOTHING, Next
from pipeline.synth import Attempt, Synthesizer, TimedSynthesizer, synthesize_segment

log = logging.getLogger(__name__)
T = TypeVar("T")

# Why the scripts left unsent after a 401 failed.
KEY_REFUSED = "not sent: Rime refused the API key"


class Outcome(StrEnum):
    """What a stage did."""

    SYNTHESIZED = "synthesized"  # audio requested from Rime
    CACHED = "cached"  # the audio was already in the segment cache
    FAILED = "failed"  # given up for good; the script fails with it
    REFUSED = "refused"  # Rime refused the API key: no other request can succeed either
    SKIPPED = "skipped"  # someone else holds it, or it is no longer pending
    RETURNED = "returned"  # not started, for this process is stopping: to be sent again
    STITCHED = "stitched"
    ASSEMBLED = "assembled"  # a book


@dataclass(frozen=True)
class StageResult:
    """What a stage did, and what that made due."""

    outcome: Outcome
    next: Next = NOTHING


@dataclass(frozen=True)
class Event:
    """Progress for a display or a log line."""

    # "segment", "attempt" (one that failed and is retried), "stitch" (started), "script",
    # "book" (assembled or failed; script_id is the book's title)
    kind: str
    job_id: str
    script_id: str
    outcome: str
    chars: int = 0
    seconds: float = 0.0
    error: str | None = None
    segment: int | None = None  # the segment's index in its script (segment and attempt events)
    attempt: int = 0  # attempt events: the number of the attempt that failed...
    max_attempts: int = 0  # ...of how many the retry policy allows


@dataclass
class _Making:
    """The segments of this process waiting for one cache entry."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class Context:
    """Everything the stages need, built once per executor."""

    db: Engine
    client: Synthesizer
    limiter: Limiter
    executor: Executor
    policy: RetryPolicy = DEFAULT_POLICY
    on_event: Callable[[Event], None] = lambda _: None
    # True once this process is shutting down: it starts no new segment (see RETURNED).
    stopping: Callable[[], bool] = lambda: False
    # Audio from different synthesizers never shares a cache entry: a render against the local
    # engine must not be shipped later as if Rime had spoken it.
    cache_namespace: str = ""
    # Rime's /ws3 client, for the segments of scripts that ask for captions (word timestamps).
    timed_client: TimedSynthesizer | None = None
    _stores: dict[str, ObjectStore] = field(default_factory=dict)
    _making: dict[str, _Making] = field(default_factory=dict)

    def cache_path(self, cache_key: str) -> str:
        """Where a segment's audio is cached in the destination."""
        return namespaced_cache_path(self.cache_namespace, cache_key)

    @contextlib.asynccontextmanager
    async def one_making(self, cache_path: str) -> AsyncIterator[None]:
        """Held while one cache entry is looked up and, on a miss, made."""
        entry = self._making.setdefault(cache_path, _Making())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._making[cache_path]

    def store(self, destination: str) -> ObjectStore:
        """The object store of a destination, opened once."""
        if destination not in self._stores:
            self._stores[destination] = open_store(destination)
        return self._stores[destination]


@dataclass(frozen=True)
class Todo:
    """What a job still needs, for an executor that runs all of it: its pending segments (as
    `synth_stage` takes them, loaded in one query) and the stitches already due."""

    segments: tuple[plans.SegmentWork, ...]
    stitches: tuple[int, ...]


def start_stage(ctx: Context, job_id: str) -> Todo:
    """Mark the job running under this executor; the segments and stitches it still needs."""
    with ctx.db.begin() as conn:
        transitions.job_state(conn, job_id)  # JobNotFound for a job that does not exist
        transitions.start_job(conn, job_id, ctx.executor.id)
        segments = plans.load_pending_segments(conn, job_id)
        return Todo(tuple(segments), tuple(views.stitchable_scripts(conn, job_id)))


class ClaimLost(Exception):
    """The segment was claimed or finished by someone else before our request: nothing sent."""


class _Returned(Exception):
    """The process began to stop before the segment was claimed: nothing sent."""


@dataclass
class _Watch:
    """A running synthesis the heartbeat may stop: its task, and whether it is still ours."""

    task: asyncio.Task[Any]
    loop: asyncio.AbstractEventLoop
    active: bool = True
    lost: bool = False

    def on_lost(self) -> None:
        # On the heartbeat thread: hand the decision to the loop, where `active` is kept.
        self.loop.call_soon_threadsafe(self._stop)

    def _stop(self) -> None:
        if self.active:
            self.lost = True
            self.task.cancel()


async def synth_stage(
    ctx: Context, segment_pk: int, work: plans.SegmentWork | None = None
) -> StageResult:
    """Take one segment's audio from the cache or from Rime, claiming it just before; record it.

    The claim is made once a slot of the limiter is held (or when the audio is found cached),
    so a cancel committed before then stops the request from being sent at all, and one made
    after it stops the request in flight within a heartbeat (see `pipeline.executor`).
    `work`, when given, is the segment as loaded before (`start_stage`): the claim decides.
    """
    if work is None:
        with ctx.db.begin() as conn:
            work = plans.load_segment(conn, segment_pk)
    if work.state not in (State.PENDING, State.RUNNING):
        return StageResult(Outcome.SKIPPED)
    store = ctx.store(work.destination)
    key = ctx.cache_path(work.segment.cache_key)
    event = Event(
        "segment", work.job_id, work.script_id, "", work.segment.chars, segment=work.segment.index
    )
    claim = ctx.executor.claim()
    watch = _Watch(_current_task(), asyncio.get_running_loop())
    claimed = False
    produced = False  # a request's audio arrived whole: an attempt to count, however it ends
    stack = contextlib.ExitStack()

    def take() -> None:
        nonlocal claimed
        if ctx.stopping():
            raise _Returned(segment_pk)
        with ctx.db.begin() as conn:
            won = transitions.claim_segment(conn, segment_pk, claim) or (
                transitions.take_over_segment(
                    conn, segment_pk, claim, dead_before=ctx.executor.dead_before()
                )
            )
        if not won:
            raise ClaimLost(segment_pk)
        claimed = True
        # Watched from the moment it is ours: a lost claim stops the request.
        stack.enter_context(ctx.executor.watching(claim, watch.on_lost))

    async def on_slot(number: int) -> None:
        if number == 1:
            take()

    def on_audio() -> None:
        with ctx.db.begin() as conn:
            transitions.bill_segment(conn, segment_pk, work.segment.chars)

    step = "reading the segment cache"
    try:
        with stack:
            # One at a time per cache entry: a second segment of the same text waits for the
            # first and finds its audio cached, rather than paying Rime for it twice.
            async with ctx.one_making(key):
                cached_seconds = (
                    None
                    if work.no_cache
                    else await _off_loop(store, key, _cached_seconds, store, key, work.timed)
                )
                if cached_seconds is not None:
                    take()
                    seconds, outcome = cached_seconds, Outcome.CACHED
                else:
                    req = TtsRequest(
                        work.segment.text, work.params, work.segment.inline_speed_alpha
                    )
                    if work.timed and ctx.timed_client is None:
                        raise PermanentError(
                            "captions need word timestamps, which only Rime's /ws3 gives, "
                            "and this executor has no WebSocket client"
                        )
                    result = await synthesize_segment(
                        ctx.client,
                        ctx.limiter,
                        req,
                        policy=ctx.policy,
                        on_attempt=lambda attempt: _record_failure(ctx, work, event, attempt),
                        on_slot=on_slot,
                        on_audio=on_audio,
                        timed=ctx.timed_client if work.timed else None,
                    )
                    produced = True
                    step = "storing audio"
                    cached = wav.cache_header(result.sampling_rate, len(result.pcm)) + result.pcm
                    await _off_loop(
                        store, key, partial(store.put_bytes, content_type="audio/wav"), key, cached
                    )
                    if result.words is not None:
                        # After the audio: a word file names the audio it belongs to.
                        await _off_loop(
                            store,
                            key,
                            partial(store.put_bytes, content_type="application/json"),
                            words_path(key),
                            sidecar.encode(cached, result.words),
                        )
                    seconds, outcome = result.seconds, Outcome.SYNTHESIZED
            watch.active = False
    except ClaimLost:
        return StageResult(Outcome.SKIPPED)
    except _Returned:
        return StageResult(Outcome.RETURNED)
    except (RimeBatchError, OSError) as exc:
        watch.active = False
        # Rime's refusals, but also a destination that cannot be written: the segment fails
        # with one clear message instead of taking the whole run down.
        error = str(exc) if isinstance(exc, RimeError) else f"{step} failed: {exc}"
        refused = isinstance(exc, AuthError)
        if not claimed:
            take_or_skip = _claim_to_fail(ctx, segment_pk, claim)
            if not take_or_skip:
                return StageResult(Outcome.SKIPPED)
        with ctx.db.begin() as conn:
            if produced:
                transitions.record_attempt(conn, segment_pk, billed_chars=0)
            after = transitions.fail_segment(conn, segment_pk, claim, error) or NOTHING
            if refused:
                after = transitions.abandon_job(conn, work.job_id, KEY_REFUSED)
        ctx.on_event(replace(event, outcome=Outcome.FAILED, error=error))
        return StageResult(Outcome.REFUSED if refused else Outcome.FAILED, after)
    except asyncio.CancelledError:
        watch.active = False
        if watch.lost and watch.task.uncancel() == 0:
            # Our claim was lost (the job cancelled, or taken over): stopped, nothing to record.
            ctx.on_event(replace(event, outcome=Outcome.SKIPPED, error="claim lost"))
            return StageResult(Outcome.SKIPPED)
        _release(ctx, segment_pk, claim, claimed, produced)
        raise
    except BaseException:
        watch.active = False
        _release(ctx, segment_pk, claim, claimed, produced)
        raise
    with ctx.db.begin() as conn:
        finished = transitions.finish_segment(
            conn,
            segment_pk,
            claim,
            audio_seconds=seconds,
            synthesized=outcome is Outcome.SYNTHESIZED,
        )
    ctx.on_event(replace(event, outcome=outcome, seconds=seconds))
    return StageResult(outcome, finished or NOTHING)


def _current_task() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    assert task is not None, "a stage runs in a task"
    return task


def _claim_to_fail(ctx: Context, segment_pk: int, claim: transitions.Claim) -> bool:
    # A failure before the claim (a permanent error of the first attempt's slot, a cache
    # that cannot be read): the segment is claimed only to record it.
    with ctx.db.begin() as conn:
        return transitions.claim_segment(conn, segment_pk, claim)


def _release(
    ctx: Context, segment_pk: int, claim: transitions.Claim, claimed: bool, produced: bool
) -> None:
    # Interrupted (Ctrl-C, a cancelled task): hand the segment back for a resume.
    if claimed:
        with ctx.db.begin() as conn:
            if produced:
                transitions.record_attempt(conn, segment_pk, billed_chars=0)
            transitions.release_segment(conn, segment_pk, claim, "interrupted")


async def _off_loop(store: ObjectStore, key: str, call: Callable[..., T], *args: Any) -> T:
    """`call(*args)`: in a thread for a remote store, on the loop for a local folder, where a
    thread hop costs more than the file operation itself."""
    if store.local_path(key) is not None:
        return call(*args)
    return await asyncio.to_thread(call, *args)


def _record_failure(ctx: Context, work: plans.SegmentWork, event: Event, attempt: Attempt) -> None:
    # A successful attempt is counted by the segment's finish, in the same transaction.
    if attempt.error is None:
        return
    with ctx.db.begin() as conn:
        # Billed already, as its first audio byte arrived, if it got that far.
        transitions.record_attempt(conn, work.segment_pk, billed_chars=0, error=attempt.error)
    # A permanent error is reported once, by the segment's failure, not as a retry.
    if attempt.retryable:
        ctx.on_event(
            replace(
                event,
                kind="attempt",
                outcome="retry",
                error=attempt.error,
                attempt=attempt.number,
                max_attempts=ctx.policy.max_attempts,
            )
        )


def _cached_seconds(store: ObjectStore, key: str, timed: bool = False) -> float | None:
    """The duration of a cached segment, or None on a miss; a damaged entry counts as a miss,
    and so, when `timed`, does one without word timestamps made with its audio."""
    try:
        data = store.get_bytes(key)
    except ObjectNotFound:
        return None
    try:
        seconds = parse_wav(data).duration
    except StreamCut as exc:
        # Content-addressed: left in place, a damaged file would fail this segment forever.
        log.warning("cached segment %s is damaged (%s); synthesizing it again", key, exc)
        store.delete(key)
        return None
    if timed and _cached_words(store, key, data) is None:
        log.info("cached segment %s has no word timestamps; synthesizing it over /ws3", key)
        return None
    return seconds


def _cached_words(
    store: ObjectStore, key: str, audio_entry: bytes
) -> tuple[WordTimestamp, ...] | None:
    """The word timestamps cached with the audio entry `audio_entry` of `key`, if any."""
    try:
        return sidecar.decode(store.get_bytes(words_path(key)), audio_entry)
    except ObjectNotFound:
        return None


def stitch_stage(ctx: Context, script_pk: int) -> StageResult:
    """Stitch a script whose segments are all done: exactly one caller wins the claim (or takes
    over the stitch of an executor that stopped)."""
    claim = ctx.executor.claim()
    with ctx.db.begin() as conn:
        won = transitions.claim_stitch(conn, script_pk, claim) or transitions.take_over_stitch(
            conn, script_pk, claim, dead_before=ctx.executor.dead_before()
        )
        if not won:
            return StageResult(Outcome.SKIPPED)
        work = plans.load_script(conn, script_pk)
    plan = work.plan
    ctx.on_event(Event("stitch", work.job_id, plan.script_id, "started", plan.chars))
    try:
        result, outputs = _stitch_into(ctx, work, ctx.store(work.destination))
    except Exception as exc:
        with ctx.db.begin() as conn:
            after = transitions.fail_script(conn, script_pk, claim, f"stitching failed: {exc}")
        ctx.on_event(Event("script", work.job_id, plan.script_id, Outcome.FAILED, error=str(exc)))
        return StageResult(Outcome.FAILED, after or NOTHING)
    except BaseException:
        with ctx.db.begin() as conn:
            transitions.release_script(conn, script_pk, claim)
        raise
    with ctx.db.begin() as conn:
        after = transitions.finish_script(
            conn,
            script_pk,
            claim,
            audio_seconds=result.duration_seconds,
            outputs=outputs,
            loudness=result.loudness,
            warnings=result.warnings,
        )
    for warning in result.warnings:
        log.warning("script %s: %s", plan.script_id, warning)
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
    return StageResult(Outcome.STITCHED, after or NOTHING)


def _stitch_into(
    ctx: Context, work: plans.ScriptWork, store: ObjectStore
) -> tuple[StitchResult, list[OutputFile]]:
    """Stitch the script's outputs into the store; each output file's record.

    In a local folder the segments are read where they are cached and the outputs are encoded
    in place (the encoder's rename is the atomic write); anything else goes through a scratch
    folder, downloads in and uploads out.
    """
    plan = work.plan
    # Into the job's release: the stable paths change only when the release is published.
    release = partial(release_key, work.job_id)
    in_place = store.local_path(release(plan.script_id))
    with contextlib.ExitStack() as stack:
        scratch = None if in_place else Path(stack.enter_context(_scratch_folder()))

        def fetch(segment: PlannedSegment) -> Path:
            key = ctx.cache_path(segment.cache_key)
            path = store.local_path(key)
            if path is None:
                assert scratch is not None
                return store.get_to_file(key, scratch.joinpath(*key.split("/")))
            if not path.is_file():
                raise ObjectNotFound(f"no object at {path}", uri=str(path))
            return path

        # A book chapter's wav copy is in the release, not among the script's outputs, and is
        # deleted once the book is made.
        if in_place is not None:
            spec = spec_for(plan, in_place.parent, stem=in_place.name)
        else:
            assert scratch is not None
            spec = spec_for(plan, scratch / "out", stem="output")
        parts = parts_for(plan, fetch)
        result = stitch(parts, spec)
        files = {fmt: (f.path, f.sha256, f.size_bytes) for fmt, f in result.files.items()}
        if plan.output.captions:
            files.update(
                _write_captions(ctx, store, plan, parts, result, spec.directory, spec.stem)
            )
        outputs = []
        for fmt, (path, sha256, size) in files.items():
            stitched = result.files.get(fmt)
            key = release(output_key(plan.script_id, fmt))
            if in_place is not None:
                uri = store.uri_for(key)
            else:
                metadata = make_metadata(
                    work.job_id,
                    plan.params.speaker,
                    plan.params.model_id,
                    result.duration_seconds,
                    sha256,
                )
                uri = store.put_file(
                    key, path, content_type=content_type_for(fmt), metadata=metadata
                )
            if fmt in plan.output.formats or fmt in plan.output.captions:
                loudness = None if stitched is None else stitched.loudness
                outputs.append(OutputFile(fmt, uri, sha256, size, loudness))
    return result, outputs


def _write_captions(
    ctx: Context,
    store: ObjectStore,
    plan: ScriptPlan,
    parts: list[Part],
    result: StitchResult,
    directory: Path,
    stem: str,
) -> dict[str, tuple[Path, str, int]]:
    """Write the script's caption files beside its audio: each format's (path, sha256, size).

    Each segment's words are those cached with the very audio file that was stitched.
    """
    segments = []
    for segment, part in zip(plan.segments, parts, strict=True):
        key = ctx.cache_path(segment.cache_key)
        words = _cached_words(store, key, part.path.read_bytes())
        if words is None:
            raise RimeBatchError(
                f"segment {segment.index} has no word timestamps cached with its audio; "
                "render the script again"
            )
        segments.append((segment.text, words))
    texts = caption_texts(programme_words(segments, result.placements), plan.output.captions)
    files = {}
    for fmt, text in texts.items():
        path = directory / f"{stem}{OUTPUT_EXTENSIONS[fmt]}"
        atomic_write(path, partial(_write_all, text.encode()))
        files[fmt] = (path, sha256_file(path), path.stat().st_size)
    return files


def _write_all(data: bytes, fh: BinaryIO) -> None:
    fh.write(data)


def _scratch_folder() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="rime-batch-")


def book_stage(ctx: Context, job_id: str) -> Outcome:
    """Assemble the job's book once every script is done (exactly one caller wins the claim, or
    takes over the book of an executor that stopped); a failure fails the book, and the job
    with it, until a resume."""
    claim = ctx.executor.claim()
    with ctx.db.begin() as conn:
        if not transitions.claim_book(conn, job_id, claim, dead_before=ctx.executor.dead_before()):
            return Outcome.SKIPPED
        work = plans.load_book_work(conn, job_id)
    title = work.book.title
    ctx.on_event(Event("book", job_id, title, "started"))
    store = ctx.store(work.destination)
    try:
        assembled, files = _assemble_into(work, store)
    except Exception as exc:
        with ctx.db.begin() as conn:
            transitions.fail_book(conn, job_id, claim, f"assembling the book failed: {exc}")
        ctx.on_event(Event("book", job_id, title, Outcome.FAILED, error=str(exc)))
        return Outcome.FAILED
    except BaseException:
        with ctx.db.begin() as conn:
            transitions.release_book(conn, job_id, claim)
        raise
    chapters = [
        {
            "script_id": c.script_id,
            "title": c.title,
            "start_seconds": seconds(c.start_seconds),
            "duration_seconds": seconds(c.duration_seconds),
            "mp3": c.mp3,
        }
        for c in assembled.chapters
    ]
    with ctx.db.begin() as conn:
        won = transitions.finish_book(conn, job_id, claim, outputs=files, chapters=chapters)
    if not won:
        return Outcome.SKIPPED
    _drop_lossless_copies(work, store)
    total = sum(c.duration_seconds for c in assembled.chapters)
    ctx.on_event(Event("book", job_id, title, Outcome.ASSEMBLED, seconds=total))
    return Outcome.ASSEMBLED


def _assemble_into(work: plans.BookWork, store: ObjectStore) -> tuple[Assembled, list[BookFile]]:
    """Assemble the book into its release from the chapters' audio: in place in a local folder,
    else through a scratch folder (downloads in, uploads out). Each file's record."""
    # The release's own results file is at its root: its folder, when the store has one.
    results = store.local_path(release_key(work.job_id, RESULTS_KEY))
    release_folder = None if results is None else results.parent
    with _scratch_folder() as scratch_name:
        scratch = Path(scratch_name)
        sources = [
            ChapterSource(
                _chapter_audio(work, store, chapter.script_id, scratch),
                work.outputs[chapter.script_id].mp3_bitrate,
            )
            for chapter in work.book.chapters
        ]
        into = release_folder if release_folder is not None else scratch / "out"
        assembled = assemble(work.book, sources, into)
        files = []
        for file in assembled.files:
            key = release_key(work.job_id, file.key)
            if release_folder:
                uri = store.uri_for(key)
            else:
                uri = store.put_file(key, file.path, content_type=BOOK_CONTENT_TYPES[file.format])
            files.append(BookFile(file.format, file.key, uri, file.sha256, file.size_bytes))
    return assembled, files


def _chapter_key(work: plans.BookWork, script_id: str, fmt: str = "wav") -> str:
    return release_key(work.job_id, output_key(script_id, fmt))


def _chapter_audio(work: plans.BookWork, store: ObjectStore, script_id: str, scratch: Path) -> Path:
    """A local PCM WAV of the chapter: its release's WAV (an output, or the book's copy), else
    any other output it has, decoded (a lossy source, as a last resort)."""
    spec = work.outputs[script_id]
    for fmt in ("wav", *(f for f in spec.formats if f != "wav")):
        key = _chapter_key(work, script_id, fmt)
        path = store.local_path(key)
        if path is None:
            try:
                path = store.get_to_file(key, scratch.joinpath("in", *key.split("/")))
            except ObjectNotFound:
                continue
        elif not path.is_file():
            continue
        if fmt == "wav":
            return path
        log.warning("book chapter %s has no WAV; decoding its %s output", script_id, fmt)
        return decode_to_wav(path, scratch.joinpath("decoded", *f"{script_id}.wav".split("/")))
    raise ObjectNotFound(
        f"chapter {script_id!r} has no audio in the release",
        uri=store.uri_for(_chapter_key(work, script_id)),
    )


def _drop_lossless_copies(work: plans.BookWork, store: ObjectStore) -> None:
    # Only the copies made for the book: a chapter's own wav output stays.
    for chapter in work.book.chapters:
        spec = work.outputs[chapter.script_id]
        if spec.lossless_copy and "wav" not in spec.formats:
            try:
                store.delete(_chapter_key(work, chapter.script_id))
            except (RimeBatchError, OSError) as exc:
                log.warning("could not delete the book's copy of %s: %s", chapter.script_id, exc)


def settle_stage(ctx: Context, job_id: str) -> State:
    """Roll the job's state up, once its book is assembled if it has one (`book_stage`); when
    it is over, write its release's results file, publish the release when every script is done
    (see `pipeline.publish`), and record the end's webhook event. The job's state."""
    book_stage(ctx, job_id)
    with ctx.db.begin() as conn:
        was = transitions.lock_job(conn, job_id)
        state = transitions.settle_job(conn, job_id)
        # Only the one settle that ended the job tells its webhooks. A failed end does so in
        # the change that ends it; a done one once its publish is decided (a publish records
        # `job.published` with itself).
        ended = was is State.RUNNING and state in ENDED_IN
        if ended and state is not State.DONE:
            job_ended(conn, job_id, ENDED_IN[state])
        summary = views.job_summary(conn, job_id)
    if state in (State.DONE, State.FAILED):
        store = ctx.store(summary.job.destination)
        store.put_bytes(
            release_key(job_id, RESULTS_KEY),
            results_bytes(summary),
            content_type="application/json",
        )
    published = state is State.DONE and publish_when_due(ctx.db, job_id, store_for=ctx.store)
    if ended and state is State.DONE and not published:
        with ctx.db.begin() as conn:
            job_ended(conn, job_id, JobEvent.DONE)
    return state
