"""The stages on their own: start, synthesize, stitch and settle against the real job table
(SQLite and PostgreSQL), real folders, the loopback S3 server and our own synthesizer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import Engine

from pipeline import wav
from pipeline.files import is_temp_name, sha256_file
from pipeline.results import results_document
from pipeline.retry import RetryPolicy
from pipeline.rime.errors import AuthError, BadRequest, RateLimited, RimeError, StreamCut
from pipeline.stages import (
    KEY_REFUSED,
    Context,
    Event,
    Outcome,
    StageResult,
    Todo,
    settle_stage,
    start_stage,
    stitch_stage,
    synth_stage,
)
from pipeline.storage import OUTPUT_EXTENSIONS, LocalStore, content_type_for, open_store
from pipeline.storage.keys import RESULTS_KEY, release_key
from pipeline.store import OutputFile, State, plans, transitions
from pipeline.store.executors import WORKER
from pipeline.store.transitions import NOTHING, Next
from tests.fixtures.jobs import (
    FAST,
    PAUSE_MS,
    RATE,
    Job,
    context,
    executor_for,
    job_row,
    plan_of,
    record,
    script_row,
    segment_row,
    summary,
    texts_of,
)
from tests.fixtures.s3 import S3Env
from tests.fixtures.synthesizers import CANCELLED, SPOKEN, Gate, ToneSynthesizer, speech_for

ALL_FORMATS = ("wav", "wav-mulaw", "mulaw", "mp3", "ogg")


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def ctx(job_table: Engine, synthesizer: ToneSynthesizer, events: list[Event]) -> Context:
    return context(job_table, synthesizer, on_event=events.append)


def new_job(
    ctx: Context,
    destination: Path | str,
    scripts: list[list[str]],
    formats: tuple[str, ...] = ("wav",),
    name: str = "stage tests",
) -> Job:
    return record(ctx.db, plan_of(str(destination), scripts, formats=formats, name=name))


def released(dest: Path, job: Job, key: str) -> Path:
    """Where a job's stitch writes `key` in a local destination: the job's release folder."""
    return dest / release_key(job.job_id, key)


async def synthesize(ctx: Context, *segment_pks: int) -> list[StageResult]:
    return [await synth_stage(ctx, pk) for pk in segment_pks]


def cache_path(ctx: Context, dest: Path, job: Job, script: int, index: int) -> Path:
    """Where a segment's audio is cached in a local destination."""
    key = ctx.cache_path(job.plan.scripts[script].segments[index].cache_key)
    return LocalStore(dest).path_for(key)


def cached_audio(job: Job, script: int, index: int) -> bytes:
    """The cache entry the stage writes for a segment the synthesizer spoke."""
    pcm = speech_for(job.request(script, index))
    return wav.cache_header(RATE, len(pcm)) + pcm


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if is_temp_name(p.name) or p.suffix == ".tmp"]


# start_stage


def pks_of(todo: Todo) -> tuple[int, ...]:
    return tuple(work.segment_pk for work in todo.segments)


def test_start_stage_marks_the_job_running_and_lists_all_its_segments(
    ctx: Context, dest: Path
) -> None:
    job = new_job(ctx, dest, texts_of(2, 3))
    assert job_row(ctx.db, job.job_id).state is State.PENDING

    todo = start_stage(ctx, job.job_id)

    row = job_row(ctx.db, job.job_id)
    assert row.state is State.RUNNING
    assert row.started_at is not None
    assert pks_of(todo) == job.all_segments
    # Each loaded as synth_stage loads it on its own.
    with ctx.db.begin() as conn:
        assert list(todo.segments) == [plans.load_segment(conn, pk) for pk in job.all_segments]
    assert todo.stitches == ()


async def test_start_stage_on_a_job_under_way_lists_what_is_left_and_the_due_stitches(
    ctx: Context, dest: Path
) -> None:
    job = new_job(ctx, dest, texts_of(3, 2))
    start_stage(ctx, job.job_id)
    # Script 0 synthesized but not stitched (a crash before its stitch), script 1 half done.
    await synthesize(ctx, *job.segments[0], job.segments[1][0])

    todo = start_stage(ctx, job.job_id)

    assert job_row(ctx.db, job.job_id).state is State.RUNNING
    assert pks_of(todo) == (job.segments[1][1], *job.segments[2])
    assert todo.stitches == (job.scripts[0],)


# synth_stage: the cache


async def test_a_cache_hit_sends_nothing_and_counts_no_attempt(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer, events: list[Event]
) -> None:
    job = new_job(ctx, dest, texts_of(1, 2))
    entry = cache_path(ctx, dest, job, 0, 0)
    LocalStore(dest).put_bytes(
        ctx.cache_path(job.plan.scripts[0].segments[0].cache_key), cached_audio(job, 0, 0)
    )

    result = await synth_stage(ctx, job.segments[0][0])

    assert result == StageResult(Outcome.CACHED, NOTHING)
    assert synthesizer.requests == []
    row = segment_row(ctx.db, job.segments[0][0])
    assert (row.state, row.attempts, row.billed_chars) == (State.DONE, 0, 0)
    assert row.audio_seconds == pytest.approx(wav.parse(entry.read_bytes()).duration)
    assert script_row(ctx.db, job.scripts[0]).billed_chars == 0
    assert [(e.kind, e.outcome) for e in events] == [("segment", Outcome.CACHED)]


async def test_a_second_job_over_the_same_destination_takes_its_audio_from_the_cache(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer
) -> None:
    first = new_job(ctx, dest, texts_of(1, 2))
    await synthesize(ctx, *first.all_segments)
    assert len(synthesizer.requests) == 2
    # Another production at the same destination: the cache is the destination's.
    second = new_job(ctx, dest, texts_of(1, 2), name="second production")

    results = await synthesize(ctx, *second.all_segments)

    assert [r.outcome for r in results] == [Outcome.CACHED, Outcome.CACHED]
    assert results[-1].next == Next(stitch=second.scripts[0])
    assert len(synthesizer.requests) == 2
    assert job_row(ctx.db, second.job_id).state is State.RUNNING
    assert summary(ctx.db, second.job_id).job.billed_chars == 0


async def test_audio_from_another_synthesizer_is_not_taken_from_the_cache(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer
) -> None:
    job = new_job(ctx, dest, texts_of(2, 1))
    await synth_stage(ctx, job.segments[0][0])
    other = Context(
        ctx.db, synthesizer, ctx.limiter, ctx.executor, policy=FAST, cache_namespace="local"
    )
    same_text = new_job(ctx, dest, texts_of(1, 1), name="second production")

    result = await synth_stage(other, same_text.segments[0][0])

    assert result.outcome is Outcome.SYNTHESIZED
    assert synthesizer.texts() == [job.text(0, 0), job.text(0, 0)]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(b"not a wav file at all", id="garbage"),
        pytest.param(wav.cache_header(RATE, 16_000) + bytes(100), id="cut short"),
    ],
)
async def test_a_damaged_cache_entry_is_synthesized_again(
    ctx: Context,
    dest: Path,
    synthesizer: ToneSynthesizer,
    damage: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = new_job(ctx, dest, texts_of(1, 1))
    entry = cache_path(ctx, dest, job, 0, 0)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(damage)

    with caplog.at_level(logging.WARNING, logger="pipeline.stages"):
        result = await synth_stage(ctx, job.segments[0][0])

    assert result.outcome is Outcome.SYNTHESIZED
    assert synthesizer.texts() == [job.text(0, 0)]
    assert entry.read_bytes() == cached_audio(job, 0, 0)
    assert "damaged" in caplog.text
    row = segment_row(ctx.db, job.segments[0][0])
    assert (row.state, row.attempts, row.billed_chars) == (State.DONE, 1, len(job.text(0, 0)))


# synth_stage: synthesis and billing


@pytest.mark.parametrize(
    ("first", "attempts", "billed_requests"),
    [
        pytest.param([], 1, 1, id="first try"),
        pytest.param([RateLimited("slow down", retry_after=0.001)], 2, 1, id="after a 429"),
        pytest.param([StreamCut("audio stream cut")], 2, 2, id="after a cut stream"),
        pytest.param(
            [StreamCut("audio stream cut"), RateLimited("slow down")], 3, 2, id="after both"
        ),
    ],
)
async def test_a_synthesized_segment_is_cached_and_billed_in_the_job_table(
    ctx: Context,
    dest: Path,
    synthesizer: ToneSynthesizer,
    events: list[Event],
    first: list[RimeError],
    attempts: int,
    billed_requests: int,
) -> None:
    job = new_job(ctx, dest, texts_of(1, 2))
    chars = len(job.text(0, 0))
    synthesizer.on_text(job.text(0, 0), *first)

    result = await synth_stage(ctx, job.segments[0][0])

    assert result == StageResult(Outcome.SYNTHESIZED, NOTHING)
    assert len(synthesizer.requests) == attempts
    assert cache_path(ctx, dest, job, 0, 0).read_bytes() == cached_audio(job, 0, 0)
    row = segment_row(ctx.db, job.segments[0][0])
    assert row.state is State.DONE
    assert (row.attempts, row.billed_chars) == (attempts, billed_requests * chars)
    assert row.audio_seconds == pytest.approx(len(speech_for(job.request(0, 0))) / 2 / RATE)
    assert script_row(ctx.db, job.scripts[0]).billed_chars == billed_requests * chars
    assert summary(ctx.db, job.job_id).job.billed_chars == billed_requests * chars
    # Each retry is told once, and the segment once.
    assert [(e.kind, e.outcome) for e in events] == [("attempt", "retry")] * len(first) + [
        ("segment", Outcome.SYNTHESIZED)
    ]


async def test_only_the_last_segment_of_a_script_to_finish_makes_its_stitch_due(
    ctx: Context, dest: Path
) -> None:
    job = new_job(ctx, dest, texts_of(2, 3))
    (a0, a1, a2), (b0, b1, b2) = job.segments

    # Out of order: what counts is which finishes last, not its index.
    results = await synthesize(ctx, a2, b0, a0, b1, a1, b2)

    assert [r.next for r in results] == [
        NOTHING,
        NOTHING,
        NOTHING,
        NOTHING,
        Next(stitch=job.scripts[0]),
        Next(stitch=job.scripts[1]),
    ]
    assert all(r.outcome is Outcome.SYNTHESIZED for r in results)


async def test_a_segment_already_done_is_skipped_and_sends_nothing(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer
) -> None:
    job = new_job(ctx, dest, texts_of(1, 1))
    await synth_stage(ctx, job.segments[0][0])

    again = await synth_stage(ctx, job.segments[0][0])

    assert again == StageResult(Outcome.SKIPPED, NOTHING)
    assert len(synthesizer.requests) == 1
    row = segment_row(ctx.db, job.segments[0][0])
    assert (row.state, row.attempts) == (State.DONE, 1)


async def test_a_segment_held_by_another_executor_is_skipped_and_sends_nothing(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer
) -> None:
    job = new_job(ctx, dest, texts_of(1, 1))
    other = executor_for(ctx.db, WORKER).claim()  # a live executor: it beats
    with ctx.db.begin() as conn:
        assert transitions.claim_segment(conn, job.segments[0][0], other)

    result = await synth_stage(ctx, job.segments[0][0])

    assert result == StageResult(Outcome.SKIPPED, NOTHING)
    assert synthesizer.requests == []
    row = segment_row(ctx.db, job.segments[0][0])
    assert (row.state, row.claim) == (State.RUNNING, other.token)


async def test_a_segment_held_by_a_dead_executor_is_taken_over(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer
) -> None:
    job = new_job(ctx, dest, texts_of(1, 1))
    dead = executor_for(ctx.db, WORKER)
    with ctx.db.begin() as conn:
        assert transitions.claim_segment(conn, job.segments[0][0], dead.claim())
    dead.close()  # it stops beating and its row is gone, as after a SIGKILL and a timeout

    result = await synth_stage(ctx, job.segments[0][0])

    assert result.outcome is Outcome.SYNTHESIZED
    assert len(synthesizer.requests) == 1
    row = segment_row(ctx.db, job.segments[0][0])
    assert (row.state, row.executor, row.attempts) == (State.DONE, ctx.executor.id, 1)


# synth_stage: failures


async def test_a_permanent_error_fails_the_segment_and_its_script_and_nothing_more_is_sent(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer, events: list[Event]
) -> None:
    job = new_job(ctx, dest, [[*texts_of(1, 2)[0]], ["The other script has one line."]])
    error = BadRequest("unknown speaker 'nobody'", status=400)
    synthesizer.on_text(job.text(0, 0), error)

    failed = await synth_stage(ctx, job.segments[0][0])

    # The other script still has work: nothing is due.
    assert failed == StageResult(Outcome.FAILED, NOTHING)
    row = segment_row(ctx.db, job.segments[0][0])
    assert (row.state, row.attempts, row.billed_chars) == (State.FAILED, 1, 0)
    assert row.last_error == str(error)
    script = script_row(ctx.db, job.scripts[0])
    assert script.state is State.FAILED
    assert script.error == f"segment 0: {error}"
    assert events[-1] == Event(
        "segment",
        job.job_id,
        "script-0",
        Outcome.FAILED,
        chars=len(job.text(0, 0)),
        error=str(error),
        segment=0,
    )
    # Its script has failed: its other segment is not worth a request.
    sibling = await synth_stage(ctx, job.segments[0][1])
    assert sibling == StageResult(Outcome.SKIPPED, NOTHING)
    assert segment_row(ctx.db, job.segments[0][1]).state is State.PENDING
    assert synthesizer.texts() == [job.text(0, 0)]
    # The last script to finish is told to settle the job, which failed.
    (other,) = await synthesize(ctx, job.segments[1][0])
    assert other.next == Next(stitch=job.scripts[1])
    assert stitch_stage(ctx, job.scripts[1]).next == Next(settle=job.job_id)
    assert settle_stage(ctx, job.job_id) is State.FAILED


EXHAUSTING = RetryPolicy(
    max_attempts=3, max_rate_limited=3, initial_wait=0.001, max_wait=0.01, jitter=0.0
)


@pytest.mark.parametrize(
    ("errors", "attempts", "billed_requests"),
    [
        pytest.param([BadRequest("text too long", status=400)], 1, 0, id="400"),
        pytest.param([StreamCut("cut")] * 3, 3, 3, id="cut streams exhaust the retries"),
        pytest.param([RateLimited("busy", retry_after=0.001)] * 3, 3, 0, id="429s exhaust"),
    ],
)
async def test_the_last_script_failing_makes_the_job_due_to_settle(
    job_table: Engine,
    synthesizer: ToneSynthesizer,
    dest: Path,
    errors: list[RimeError],
    attempts: int,
    billed_requests: int,
) -> None:
    ctx = context(job_table, synthesizer, policy=EXHAUSTING)
    job = new_job(ctx, dest, texts_of(2, 1))
    chars = len(job.text(1, 0))
    await synth_stage(ctx, job.segments[0][0])
    assert stitch_stage(ctx, job.scripts[0]).next == NOTHING  # script 1 still to run
    synthesizer.on_text(job.text(1, 0), *errors)

    failed = await synth_stage(ctx, job.segments[1][0])

    assert failed == StageResult(Outcome.FAILED, Next(settle=job.job_id))
    assert synthesizer.count(job.text(1, 0)) == attempts
    row = segment_row(ctx.db, job.segments[1][0])
    assert (row.state, row.attempts, row.billed_chars) == (
        State.FAILED,
        attempts,
        billed_requests * chars,
    )
    assert row.last_error == str(errors[-1])
    assert script_row(ctx.db, job.scripts[1]).billed_chars == billed_requests * chars
    assert settle_stage(ctx, job.job_id) is State.FAILED


async def test_a_refused_key_abandons_the_waiting_scripts_and_a_resume_picks_them_up(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer
) -> None:
    job = new_job(
        ctx,
        dest,
        [
            ["This script was done before the refusal."],
            ["The refused request.", "Its script's other segment."],
            ["A script still waiting."],
        ],
    )
    await synth_stage(ctx, job.segments[0][0])
    stitch_stage(ctx, job.scripts[0])
    refusal = AuthError("invalid api key", status=401)
    synthesizer.on_text(job.text(1, 0), refusal)

    refused = await synth_stage(ctx, job.segments[1][0])

    # Nothing is left to run: script 0 is done, and the others failed with the key.
    assert refused == StageResult(Outcome.REFUSED, Next(settle=job.job_id))
    row = segment_row(ctx.db, job.segments[1][0])
    assert (row.state, row.attempts, row.billed_chars) == (State.FAILED, 1, 0)
    assert script_row(ctx.db, job.scripts[1]).error == f"segment 0: {refusal}"
    waiting = script_row(ctx.db, job.scripts[2])
    assert (waiting.state, waiting.error) == (State.FAILED, KEY_REFUSED)
    assert script_row(ctx.db, job.scripts[0]).state is State.DONE
    # Never tried: still pending, and skipped without a request while the job is abandoned.
    for pk in (job.segments[1][1], job.segments[2][0]):
        assert await synth_stage(ctx, pk) == StageResult(Outcome.SKIPPED, NOTHING)
        assert segment_row(ctx.db, pk).state is State.PENDING
        assert segment_row(ctx.db, pk).attempts == 0
    assert synthesizer.texts() == [job.text(0, 0), job.text(1, 0)]
    assert settle_stage(ctx, job.job_id) is State.FAILED

    # A resume, with a key that works now, sends exactly what was not done.
    with ctx.db.begin() as conn:
        assert transitions.reset_for_resume(conn, job.job_id) == 1
    todo = start_stage(ctx, job.job_id)
    assert pks_of(todo) == (*job.segments[1], job.segments[2][0])
    assert todo.stitches == ()
    synthesizer.forget()
    results = await synthesize(ctx, *pks_of(todo))
    assert synthesizer.texts() == [job.text(1, 0), job.text(1, 1), job.text(2, 0)]
    assert [r.next for r in results] == [
        NOTHING,
        Next(stitch=job.scripts[1]),
        Next(stitch=job.scripts[2]),
    ]
    assert stitch_stage(ctx, job.scripts[1]).next == NOTHING
    assert stitch_stage(ctx, job.scripts[2]).next == Next(settle=job.job_id)
    assert settle_stage(ctx, job.job_id) is State.DONE
    # The refused request stays counted; it was never billed.
    assert segment_row(ctx.db, job.segments[1][0]).attempts == 2


async def test_a_destination_where_the_cache_cannot_be_read_fails_before_any_request(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer
) -> None:
    job = new_job(ctx, dest, texts_of(1, 1))
    dest.mkdir()
    (dest / "cache").write_text("a file where the cache folder should be")
    entry = cache_path(ctx, dest, job, 0, 0)

    result = await synth_stage(ctx, job.segments[0][0])

    assert result == StageResult(Outcome.FAILED, Next(settle=job.job_id))
    assert synthesizer.requests == []
    row = segment_row(ctx.db, job.segments[0][0])
    assert (row.state, row.attempts, row.billed_chars) == (State.FAILED, 0, 0)
    assert row.last_error is not None
    assert str(entry) in row.last_error
    assert "Not a directory" in row.last_error
    assert "\n" not in row.last_error
    assert script_row(ctx.db, job.scripts[0]).error == f"segment 0: {row.last_error}"


async def test_an_unwritable_destination_fails_the_segment_with_one_clear_message(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer, tmp_path: Path, events: list[Event]
) -> None:
    # The cache folder is a link to a disk that is not there: the cache lookup finds nothing,
    # the audio is generated, and storing it fails.
    job = new_job(ctx, dest, texts_of(1, 1))
    dest.mkdir()
    (dest / "cache").symlink_to(tmp_path / "unmounted-disk", target_is_directory=True)
    entry = cache_path(ctx, dest, job, 0, 0)
    chars = len(job.text(0, 0))

    result = await synth_stage(ctx, job.segments[0][0])

    assert result == StageResult(Outcome.FAILED, Next(settle=job.job_id))
    assert [r.outcome for r in synthesizer.requests] == [SPOKEN]
    row = segment_row(ctx.db, job.segments[0][0])
    # The audio was generated, and paid for, before storing it failed.
    assert (row.state, row.attempts, row.billed_chars) == (State.FAILED, 1, chars)
    assert row.last_error == f"storing audio failed: cannot store {entry}: File exists"
    assert script_row(ctx.db, job.scripts[0]).billed_chars == chars
    assert [(e.outcome, e.error) for e in events] == [(Outcome.FAILED, row.last_error)]


# synth_stage: interruptions


async def test_an_interrupted_synthesis_hands_the_segment_back_unbilled(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer
) -> None:
    job = new_job(ctx, dest, texts_of(1, 1))
    gate = Gate()
    synthesizer.on_text(job.text(0, 0), gate)
    task = asyncio.create_task(synth_stage(ctx, job.segments[0][0]))
    await gate.wait_arrived()
    assert segment_row(ctx.db, job.segments[0][0]).state is State.RUNNING

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert [r.outcome for r in synthesizer.requests] == [CANCELLED]
    row = segment_row(ctx.db, job.segments[0][0])
    assert (row.state, row.attempts, row.billed_chars) == (State.PENDING, 0, 0)
    assert (row.started_at, row.last_error) == (None, "interrupted")
    assert not cache_path(ctx, dest, job, 0, 0).exists()
    # It is claimed again like any pending segment.
    again = await synth_stage(ctx, job.segments[0][0])
    assert again.outcome is Outcome.SYNTHESIZED
    assert segment_row(ctx.db, job.segments[0][0]).attempts == 1


async def test_an_interruption_during_the_retries_keeps_the_billed_attempts(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer
) -> None:
    job = new_job(ctx, dest, texts_of(1, 1))
    chars = len(job.text(0, 0))
    gate = Gate()
    synthesizer.on_text(job.text(0, 0), StreamCut("audio stream cut"), gate)
    task = asyncio.create_task(synth_stage(ctx, job.segments[0][0]))
    await gate.wait_arrived()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    row = segment_row(ctx.db, job.segments[0][0])
    # The cut stream was generated and is billed; the interrupted request never answered.
    assert (row.state, row.attempts, row.billed_chars) == (State.PENDING, 1, chars)
    assert row.last_error == "interrupted"
    assert script_row(ctx.db, job.scripts[0]).billed_chars == chars


async def test_an_interruption_after_the_audio_arrived_counts_its_billed_attempt(
    job_table: Engine, synthesizer: ToneSynthesizer, s3: S3Env, s3_bucket: str
) -> None:
    # In a bucket the audio is uploaded off the loop: an interruption can land while the
    # audio that was paid for is on its way to the cache.
    ctx = context(job_table, synthesizer)
    job = new_job(ctx, s3.uri(s3_bucket, "renders"), texts_of(1, 1))
    chars = len(job.text(0, 0))
    task = asyncio.create_task(synth_stage(ctx, job.segments[0][0]))
    while not synthesizer.requests or synthesizer.requests[0].ended is None:
        await asyncio.sleep(0)
    assert synthesizer.requests[0].outcome == SPOKEN

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    row = segment_row(ctx.db, job.segments[0][0])
    assert (row.state, row.attempts, row.billed_chars) == (State.PENDING, 1, chars)
    assert row.last_error == "interrupted"
    assert script_row(ctx.db, job.scripts[0]).billed_chars == chars
    # Whether the upload went on in its thread or was cancelled before it started, the job
    # table ends up counting every request the account paid for.
    again = await synth_stage(ctx, job.segments[0][0])
    assert again.outcome in (Outcome.CACHED, Outcome.SYNTHESIZED)
    assert again.next == Next(stitch=job.scripts[0])
    paid = len(synthesizer.requests)
    assert paid == (1 if again.outcome is Outcome.CACHED else 2)
    row = segment_row(ctx.db, job.segments[0][0])
    assert (row.state, row.attempts, row.billed_chars) == (State.DONE, paid, paid * chars)


# stitch_stage


def expected_seconds(job: Job, script: int) -> float:
    """The programme's length: every segment's speech and every pause after it."""
    segments = job.plan.scripts[script].segments
    speech = sum(len(speech_for(job.request(script, i))) / 2 / RATE for i in range(len(segments)))
    return speech + PAUSE_MS / 1000 * len(segments)


async def test_stitch_stage_writes_every_format_as_the_job_table_records_it(
    ctx: Context, dest: Path, events: list[Event], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    job = new_job(ctx, dest, texts_of(1, 2), formats=ALL_FORMATS)
    *_, last = await synthesize(ctx, *job.all_segments)
    assert last.next == Next(stitch=job.scripts[0])

    result = stitch_stage(ctx, job.scripts[0])

    assert result == StageResult(Outcome.STITCHED, Next(settle=job.job_id))
    row = script_row(ctx.db, job.scripts[0])
    assert row.state is State.DONE
    seconds = row.audio_seconds
    assert seconds is not None
    assert seconds == pytest.approx(expected_seconds(job, 0), abs=0.01)
    outputs = [OutputFile(**o) for o in row.outputs]
    assert [o.format for o in outputs] == list(ALL_FORMATS)
    for output in outputs:
        path = released(dest, job, f"script-0{OUTPUT_EXTENSIONS[output.format]}")
        assert output.uri == str(path)
        assert output.sha256 == sha256_file(path)
        assert output.bytes == path.stat().st_size > 0
    wav_file = released(dest, job, "script-0.wav").read_bytes()
    assert wav.parse(wav_file).duration == pytest.approx(seconds, abs=1e-6)
    # The release's outputs and the cache, and nothing else: nothing at the stable paths
    # before the release is published, no temp files, no scratch folder.
    assert files_in(dest) == {
        release_key(job.job_id, f"script-0{OUTPUT_EXTENSIONS[f]}") for f in ALL_FORMATS
    } | {cache_path(ctx, dest, job, 0, i).relative_to(dest).as_posix() for i in (0, 1)}
    assert no_temp_files(dest)
    assert list(scratch.iterdir()) == []
    # Stitching is a phase of its own for a display: its start is told, then its end.
    chars = job.plan.scripts[0].chars
    assert events[-2] == Event("stitch", job.job_id, "script-0", "started", chars)
    assert events[-1] == Event(
        "script",
        job.job_id,
        "script-0",
        Outcome.STITCHED,
        job.plan.scripts[0].chars,
        seconds,
    )


async def test_stitch_stage_uploads_every_format_to_s3_as_the_job_table_records_it(
    job_table: Engine,
    synthesizer: ToneSynthesizer,
    s3: S3Env,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    ctx = context(job_table, synthesizer)
    formats = ("wav", "mp3", "wav-mulaw")
    job = new_job(ctx, s3.uri(s3_bucket, "renders/2026"), texts_of(2, 2), formats=formats)
    await synthesize(ctx, *job.all_segments)

    first = stitch_stage(ctx, job.scripts[0])
    second = stitch_stage(ctx, job.scripts[1])

    assert first == StageResult(Outcome.STITCHED, NOTHING)
    assert second == StageResult(Outcome.STITCHED, Next(settle=job.job_id))
    for s, script_pk in enumerate(job.scripts):
        row = script_row(ctx.db, script_pk)
        assert row.audio_seconds == pytest.approx(expected_seconds(job, s), abs=0.01)
        for output in (OutputFile(**o) for o in row.outputs):
            key = "renders/2026/" + release_key(
                job.job_id, f"script-{s}{OUTPUT_EXTENSIONS[output.format]}"
            )
            assert output.uri == f"s3://{s3_bucket}/{key}"
            stored = s3.client.get_object(Bucket=s3_bucket, Key=key)
            body = stored["Body"].read()
            assert hashlib.sha256(body).hexdigest() == output.sha256
            assert len(body) == output.bytes == stored["ContentLength"]
            assert stored["ContentType"] == content_type_for(output.format)
            assert stored["Metadata"]["sha256"] == output.sha256
            assert stored["Metadata"]["job-id"] == job.job_id
    listed = s3.client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert {o["Key"] for o in listed} == {
        "renders/2026/" + release_key(job.job_id, f"script-{s}{OUTPUT_EXTENSIONS[f]}")
        for s in (0, 1)
        for f in formats
    } | {
        "renders/2026/" + ctx.cache_path(seg.cache_key)
        for script in job.plan.scripts
        for seg in script.segments
    }
    # The scratch folders of both stitches are gone.
    assert list(scratch.iterdir()) == []


async def test_a_script_is_stitched_only_once_every_segment_is_done_and_only_once(
    ctx: Context, dest: Path
) -> None:
    job = new_job(ctx, dest, texts_of(1, 2))
    await synth_stage(ctx, job.segments[0][0])

    early = stitch_stage(ctx, job.scripts[0])

    assert early == StageResult(Outcome.SKIPPED, NOTHING)
    assert script_row(ctx.db, job.scripts[0]).state is State.PENDING
    assert not released(dest, job, "script-0.wav").exists()
    await synth_stage(ctx, job.segments[0][1])
    assert stitch_stage(ctx, job.scripts[0]).outcome is Outcome.STITCHED
    written = released(dest, job, "script-0.wav").stat()

    again = stitch_stage(ctx, job.scripts[0])

    assert again == StageResult(Outcome.SKIPPED, NOTHING)
    assert released(dest, job, "script-0.wav").stat().st_mtime_ns == written.st_mtime_ns


async def test_a_stitch_that_cannot_find_a_segment_fails_its_script(
    ctx: Context, dest: Path, events: list[Event]
) -> None:
    job = new_job(ctx, dest, texts_of(1, 2))
    await synthesize(ctx, *job.all_segments)
    missing = cache_path(ctx, dest, job, 0, 1)
    missing.unlink()

    result = stitch_stage(ctx, job.scripts[0])

    assert result == StageResult(Outcome.FAILED, Next(settle=job.job_id))
    row = script_row(ctx.db, job.scripts[0])
    assert row.state is State.FAILED
    assert row.error == f"stitching failed: no object at {missing}"
    assert row.outputs == []
    assert not released(dest, job, "script-0.wav").exists()
    assert no_temp_files(dest)
    assert (events[-1].kind, events[-1].outcome) == ("script", Outcome.FAILED)
    assert settle_stage(ctx, job.job_id) is State.FAILED


# settle_stage


def results_file(ctx: Context, job: Job, key: str | None = None) -> dict[str, object]:
    """The job's own results file, in its release folder (or the file at `key`)."""
    data = ctx.store(job.plan.destination).get_bytes(key or release_key(job.job_id, RESULTS_KEY))
    parsed: dict[str, object] = json.loads(data)
    return parsed


async def test_results_are_written_only_when_the_job_is_over_and_match_its_summary(
    ctx: Context, dest: Path
) -> None:
    job = new_job(ctx, dest, texts_of(2, 1), formats=("wav", "mp3"))
    await synth_stage(ctx, job.segments[0][0])
    stitch_stage(ctx, job.scripts[0])

    assert settle_stage(ctx, job.job_id) is State.RUNNING
    assert not (dest / RESULTS_KEY).exists()
    assert not released(dest, job, RESULTS_KEY).exists()

    await synth_stage(ctx, job.segments[1][0])
    assert stitch_stage(ctx, job.scripts[1]).next == Next(settle=job.job_id)
    assert settle_stage(ctx, job.job_id) is State.DONE

    over = summary(ctx.db, job.job_id)
    assert over.job.state is State.DONE
    document = results_file(ctx, job)
    assert document == json.loads(json.dumps(results_document(over)))
    assert document["state"] == "done"
    assert document["billed_chars"] == job.plan.chars
    scripts = document["scripts"]
    assert isinstance(scripts, list)
    assert [len(s["outputs"]) for s in scripts] == [2, 2]
    # Done, so published: the root file names the release and each output's stable path.
    published = results_file(ctx, job, RESULTS_KEY)
    assert published["release"] == job.job_id
    assert [
        [(o["uri"], o["published_uri"]) for o in s["outputs"]] for s in published["scripts"]
    ] == [
        [(o["uri"], str(dest / f"{s['id']}{OUTPUT_EXTENSIONS[o['format']]}")) for o in s["outputs"]]
        for s in scripts
    ]
    # Settling again changes nothing.
    assert settle_stage(ctx, job.job_id) is State.DONE
    assert results_file(ctx, job) == document
    assert results_file(ctx, job, RESULTS_KEY) == published


async def test_a_failed_job_gets_its_results_too(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer
) -> None:
    job = new_job(ctx, dest, texts_of(2, 1))
    synthesizer.on_text(job.text(0, 0), BadRequest("unknown speaker", status=400))
    await synthesize(ctx, *job.all_segments)
    stitch_stage(ctx, job.scripts[1])

    assert settle_stage(ctx, job.job_id) is State.FAILED

    document = results_file(ctx, job)
    assert document == json.loads(json.dumps(results_document(summary(ctx.db, job.job_id))))
    assert document["state"] == "failed"
    scripts = document["scripts"]
    assert isinstance(scripts, list)
    assert [s["state"] for s in scripts] == ["failed", "done"]
    assert "unknown speaker" in scripts[0]["error"]
    # Nothing of a failed job is published.
    assert (
        files_in(dest) - {p for p in files_in(dest) if p.startswith(("releases/", "cache/"))}
        == set()
    )


def test_results_go_to_the_jobs_own_destination(
    job_table: Engine, synthesizer: ToneSynthesizer, s3: S3Env, s3_bucket: str
) -> None:
    ctx = context(job_table, synthesizer)
    job = new_job(ctx, s3.uri(s3_bucket, "jobs/a"), texts_of(1, 1))
    with ctx.db.begin() as conn:
        transitions.start_job(conn, job.job_id)
        transitions.abandon_job(conn, job.job_id, "given up")

    assert settle_stage(ctx, job.job_id) is State.FAILED

    stored = open_store(job.plan.destination).get_bytes(release_key(job.job_id, RESULTS_KEY))
    assert json.loads(stored)["state"] == "failed"
    assert s3.client.head_object(
        Bucket=s3_bucket, Key=f"jobs/a/{release_key(job.job_id, RESULTS_KEY)}"
    )


async def test_segments_of_one_text_in_flight_together_pay_for_it_once(
    ctx: Context, dest: Path, synthesizer: ToneSynthesizer
) -> None:
    # "Thank you for calling." in two scripts: one request, the other from the cache.
    text = "Thank you for calling."
    job = new_job(ctx, dest, [[text], [text]])
    gate = Gate()
    synthesizer.on_text(text, gate)
    first, second = job.all_segments
    running = [asyncio.create_task(synth_stage(ctx, pk)) for pk in (first, second)]
    await gate.wait_arrived(1)
    await asyncio.sleep(0.05)  # the other segment is waiting by now, not sending
    assert gate.arrived == 1
    gate.release()
    results = await asyncio.gather(*running)
    assert sorted(r.outcome for r in results) == [Outcome.CACHED, Outcome.SYNTHESIZED]
    assert synthesizer.count(text) == 1
    billed = [script_row(ctx.db, pk).billed_chars for pk in job.scripts]
    assert sorted(billed) == [0, len(text)]
