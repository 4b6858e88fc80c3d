"""The embedded executor, `run_job`, with our own synthesizer against the real job table (SQLite
and PostgreSQL), a local folder and the real local limiter."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from pipeline.files import sha256_file
from pipeline.results import results_document
from pipeline.retry import RetryPolicy
from pipeline.rime.errors import AuthError, BadRequest, RateLimited, ServerError, StreamCut
from pipeline.run import run_job
from pipeline.stages import KEY_REFUSED, Context, Event, synth_stage
from pipeline.storage.keys import RESULTS_KEY, release_key
from pipeline.store import OutputFile, State, open_database, transitions
from tests.fixtures.jobs import (
    ME,
    Job,
    context,
    job_row,
    plan_of,
    record,
    script_row,
    segment_row,
    summary,
    texts_of,
)
from tests.fixtures.synthesizers import (
    CANCELLED,
    SPOKEN,
    Audio,
    Behaviour,
    Gate,
    Slow,
    ToneSynthesizer,
)

RUN_TIMEOUT = 20.0  # a run that hangs fails the test instead of the suite


async def run(ctx: Context, job: Job, *, workers: int = 4, stitchers: int = 2) -> State:
    async with asyncio.timeout(RUN_TIMEOUT):
        return await run_job(ctx, job.job_id, workers=workers, stitchers=stitchers)


def stitched(events: list[Event]) -> Counter[str]:
    """How many times each script was stitched, by its id."""
    return Counter(e.script_id for e in events if e.kind == "script" and e.outcome == "stitched")


def results_match_the_table(db: Engine, job: Job) -> None:
    # The job's own results file, in its release folder.
    released = Path(job.plan.destination) / release_key(job.job_id, RESULTS_KEY)
    written = json.loads(released.read_bytes())
    assert written == json.loads(json.dumps(results_document(summary(db, job.job_id))))


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for `condition` to hold, looking every few milliseconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.002)


# Any job, any outcomes

MAX_ATTEMPTS = 4
MAX_RATE_LIMITED = 3  # 429s are counted apart from the other failures, against their own bound
POLICY = RetryPolicy(
    max_attempts=MAX_ATTEMPTS,
    max_rate_limited=MAX_RATE_LIMITED,
    initial_wait=0.001,
    max_wait=0.01,
    jitter=0.0,
)
# A transient failure of each kind, and whether Rime bills it.
TRANSIENT: dict[str, tuple[Behaviour, bool]] = {
    "5xx": (ServerError("upstream overloaded", status=503), False),
    "429": (RateLimited("too many requests", retry_after=0.001), False),
    "cut": (StreamCut("audio stream cut"), True),
    "rejected": (Audio(0.0), True),  # no audio at all: AudioRejected, generated all the same
}
PERMANENT = BadRequest("unknown speaker 'nobody'", status=400)


@dataclass(frozen=True)
class Fate:
    """What the requests for one segment meet: transient failures, then an answer."""

    transient: tuple[str, ...]
    ends_well: bool  # the answer after them: audio, or a 400

    def behaviours(self) -> list[Behaviour]:
        scripted = [TRANSIENT[kind][0] for kind in self.transient]
        return scripted if self.ends_well else [*scripted, PERMANENT]

    def expected(self, chars: int) -> tuple[State, int, int]:
        """The segment's state, attempts and billed characters, by the billing rules."""
        attempts = billed = limited = 0
        for kind in self.transient:
            attempts += 1
            limited += kind == "429"
            billed += chars if TRANSIENT[kind][1] else 0
            if attempts - limited == MAX_ATTEMPTS or limited == MAX_RATE_LIMITED:
                return State.FAILED, attempts, billed
        attempts += 1
        if self.ends_well:
            return State.DONE, attempts, billed + chars
        return State.FAILED, attempts, billed


fates = st.builds(
    Fate,
    transient=st.lists(
        st.sampled_from(sorted(TRANSIENT)), max_size=MAX_ATTEMPTS + MAX_RATE_LIMITED
    ).map(tuple),
    ends_well=st.sampled_from([True, True, True, False]),
)
jobs = st.lists(st.lists(fates, min_size=1, max_size=4), min_size=1, max_size=6)


def texts(fates_of: list[list[Fate]]) -> list[list[str]]:
    """A distinct text for every segment of the job."""
    return [
        [f"Script {s} line {i} reads a short sentence aloud." for i in range(len(script))]
        for s, script in enumerate(fates_of)
    ]


@given(
    fates_of=jobs,
    concurrency=st.integers(1, 4),
    extra_workers=st.integers(0, 3),
    stitchers=st.integers(1, 2),
)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_job_ends_with_its_scripts_done_or_failed_and_the_table_agrees_with_the_requests(
    job_table: Engine,
    tmp_path: Path,
    fates_of: list[list[Fate]],
    concurrency: int,
    extra_workers: int,
    stitchers: int,
) -> None:
    dest = tmp_path / uuid.uuid4().hex[:8]
    job = record(job_table, plan_of(str(dest), texts(fates_of)))
    synth = ToneSynthesizer(default=Slow(0.002))
    for s, script in enumerate(fates_of):
        for i, fate in enumerate(script):
            synth.on_text(job.text(s, i), *fate.behaviours())
    events: list[Event] = []

    async def scenario() -> State:
        ctx = context(
            job_table, synth, concurrency=concurrency, policy=POLICY, on_event=events.append
        )
        return await run(ctx, job, workers=concurrency + extra_workers, stitchers=stitchers)

    state = asyncio.run(scenario())

    assert synth.in_flight == 0
    done_scripts = 0
    for s, script in enumerate(fates_of):
        script_fails = any(f.expected(0)[0] is State.FAILED for f in script)
        billed_in_script = 0
        for i, fate in enumerate(script):
            text, chars = job.text(s, i), len(job.text(s, i))
            row = segment_row(job_table, job.segments[s][i])
            requests = synth.of_text(text)
            # Nothing is asked again once its audio was accepted.
            assert SPOKEN not in [r.outcome for r in requests[:-1]]
            seen_billed = chars * sum(r.outcome in ("StreamCut", "audio", SPOKEN) for r in requests)
            assert (row.attempts, row.billed_chars) == (len(requests), seen_billed)
            if requests:
                # Tried: every request its fate called for, and the state it leads to.
                assert (row.state, row.attempts, row.billed_chars) == fate.expected(chars)
            else:
                # Never tried: only when its script had already failed.
                assert script_fails
                assert (row.state, row.attempts, row.billed_chars) == (State.PENDING, 0, 0)
            billed_in_script += row.billed_chars
        stored = script_row(job_table, job.scripts[s])
        assert stored.billed_chars == billed_in_script
        if script_fails:
            assert stored.state is State.FAILED
            assert stitched(events)[f"script-{s}"] == 0
            assert stored.outputs == []
        else:
            done_scripts += 1
            assert stored.state is State.DONE
            assert stitched(events)[f"script-{s}"] == 1
            [output] = [OutputFile(**o) for o in stored.outputs]
            assert output.sha256 == sha256_file(Path(output.uri))
    job_state = job_row(job_table, job.job_id).state
    assert state is job_state is (State.DONE if done_scripts == len(fates_of) else State.FAILED)
    totals = summary(job_table, job.job_id).job
    assert totals.billed_chars == sum(script_row(job_table, pk).billed_chars for pk in job.scripts)
    results_match_the_table(job_table, job)


# A refused key


async def test_a_refused_key_stops_the_run_at_once_and_a_resume_finishes_it(
    job_table: Engine, tmp_path: Path, synthesizer: ToneSynthesizer
) -> None:
    job = record(job_table, plan_of(str(tmp_path / "out"), texts_of(6, 2)))
    synthesizer.default = Slow(0.005)
    # Two requests that would never answer hold their slots; the third is refused.
    never = Gate()
    synthesizer.on_call(1, never)
    synthesizer.on_call(2, never)
    synthesizer.on_call(3, Slow(0.01, then=AuthError("invalid api key", status=401)))
    events: list[Event] = []
    ctx = context(job_table, synthesizer, concurrency=3, on_event=events.append)

    state = await run(ctx, job, workers=6)

    assert state is State.FAILED
    first, second, refused = synthesizer.requests
    assert refused.outcome == "AuthError"
    assert refused.ended is not None
    assert synthesizer.started_after(refused.ended) == []
    # The requests in flight were given up, not waited for.
    assert (first.outcome, second.outcome) == (CANCELLED, CANCELLED)
    refused_pk = pk_of(job, refused.text)
    row = segment_row(job_table, refused_pk)
    assert (row.state, row.attempts, row.billed_chars) == (State.FAILED, 1, 0)
    refused_script = job.script_of(refused_pk)
    for s, script_pk in enumerate(job.scripts):
        script = script_row(job_table, script_pk)
        assert script.state is State.FAILED
        if s == refused_script:
            assert script.error is not None and "Rime HTTP 401: invalid api key" in script.error
        else:
            assert script.error == KEY_REFUSED
    for pk in job.all_segments:
        if pk != refused_pk:
            other = segment_row(job_table, pk)
            assert (other.state, other.attempts, other.billed_chars) == (State.PENDING, 0, 0)
    for interrupted in (first, second):
        assert segment_row(job_table, pk_of(job, interrupted.text)).last_error == "interrupted"
    results_match_the_table(job_table, job)

    # With a key that works, a resume sends every segment once and finishes the job.
    with job_table.begin() as conn:
        transitions.reset_for_resume(conn, job.job_id)
    good = ToneSynthesizer(default=Slow(0.001))
    resumed = context(job_table, good, concurrency=3, on_event=events.append)
    assert await run(resumed, job, workers=6) is State.DONE
    assert Counter(good.texts()) == Counter(job.text(s, i) for s in range(6) for i in range(2))
    assert stitched(events) == Counter(f"script-{s}" for s in range(6))
    results_match_the_table(job_table, job)


def pk_of(job: Job, text: str) -> int:
    """The row id of the segment whose text is `text`."""
    [pk] = [
        job.segments[s][i]
        for s, script in enumerate(job.plan.scripts)
        for i, segment in enumerate(script.segments)
        if segment.text == text
    ]
    return pk


# The limiter's cap


@pytest.mark.parametrize(("cap", "workers"), [(1, 3), (3, 8), (4, 4)])
async def test_requests_in_flight_never_exceed_the_limiters_cap(
    job_table: Engine,
    tmp_path: Path,
    synthesizer: ToneSynthesizer,
    cap: int,
    workers: int,
) -> None:
    job = record(job_table, plan_of(str(tmp_path / "out"), texts_of(4, 3)))
    synthesizer.default = Slow(0.01)
    ctx = context(job_table, synthesizer, concurrency=cap)

    assert await run(ctx, job, workers=workers) is State.DONE

    assert len(synthesizer.requests) == 12
    # Measured where the requests arrive: the cap is reached, and never passed.
    assert synthesizer.peak_in_flight == cap


# Resuming


async def test_a_resume_after_an_interrupted_run_sends_only_what_was_not_done(
    job_table: Engine, tmp_path: Path, synthesizer: ToneSynthesizer
) -> None:
    job = record(job_table, plan_of(str(tmp_path / "out"), texts_of(3, 2)))
    held = Gate()
    synthesizer.on_text(job.text(2, 1), held)
    events: list[Event] = []
    ctx = context(job_table, synthesizer, concurrency=2, on_event=events.append)
    task = asyncio.create_task(run(ctx, job, workers=2))
    await held.wait_arrived()
    # Everything else is done and the two complete scripts stitched: now interrupt.
    await until(lambda: len(stitched(events)) == 2)
    await until(lambda: sum(e.outcome == "synthesized" for e in events) == 5)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    interrupted = segment_row(job_table, job.segments[2][1])
    assert (interrupted.state, interrupted.last_error) == (State.PENDING, "interrupted")
    assert script_row(job_table, job.scripts[2]).state is State.PENDING
    assert job_row(job_table, job.job_id).state is State.RUNNING
    sent_before = synthesizer.texts()
    outputs_before = [script_row(job_table, pk).outputs for pk in job.scripts[:2]]

    with job_table.begin() as conn:
        transitions.reset_for_resume(conn, job.job_id)
    again = ToneSynthesizer()
    resumed_events: list[Event] = []
    resumed = context(job_table, again, concurrency=2, on_event=resumed_events.append)
    assert await run(resumed, job, workers=2) is State.DONE

    # Before: every segment once, the interrupted one included. Now: only that one.
    assert Counter(sent_before) == Counter(job.text(s, i) for s in range(3) for i in range(2))
    assert again.texts() == [job.text(2, 1)]
    assert stitched(resumed_events) == Counter({"script-2": 1})
    assert [script_row(job_table, pk).outputs for pk in job.scripts[:2]] == outputs_before
    results_match_the_table(job_table, job)


async def test_a_run_stitches_the_scripts_whose_segments_were_all_done_before_it(
    job_table: Engine, tmp_path: Path, synthesizer: ToneSynthesizer
) -> None:
    # A crash between a script's last segment and its stitch leaves it complete but pending.
    job = record(job_table, plan_of(str(tmp_path / "out"), texts_of(2, 2)))
    ctx = context(job_table, synthesizer)
    for pk in job.segments[0]:
        await synth_stage(ctx, pk)
    synthesizer.forget()
    events: list[Event] = []
    ctx.on_event = events.append

    assert await run(ctx, job) is State.DONE

    assert synthesizer.texts() == [job.text(1, 0), job.text(1, 1)]
    assert stitched(events) == Counter({"script-0": 1, "script-1": 1})
    results_match_the_table(job_table, job)


async def test_a_resume_after_a_crash_in_stitching_stitches_without_a_request(
    job_table: Engine, tmp_path: Path, synthesizer: ToneSynthesizer
) -> None:
    job = record(job_table, plan_of(str(tmp_path / "out"), texts_of(2, 2)))
    ctx = context(job_table, synthesizer)
    for pk in job.all_segments:
        await synth_stage(ctx, pk)
    # A stitcher claimed script 0 and died; script 1 was never claimed.
    with job_table.begin() as conn:
        assert transitions.claim_stitch(conn, job.scripts[0], ME)
        transitions.reset_for_resume(conn, job.job_id)
    synthesizer.forget()
    events: list[Event] = []
    ctx.on_event = events.append

    assert await run(ctx, job) is State.DONE

    assert synthesizer.requests == []
    assert stitched(events) == Counter({"script-0": 1, "script-1": 1})
    results_match_the_table(job_table, job)


async def test_a_run_of_a_finished_job_sends_nothing(
    job_table: Engine, tmp_path: Path, synthesizer: ToneSynthesizer
) -> None:
    job = record(job_table, plan_of(str(tmp_path / "out"), texts_of(2, 2)))
    ctx = context(job_table, synthesizer)
    assert await run(ctx, job) is State.DONE
    synthesizer.forget()
    events: list[Event] = []
    ctx.on_event = events.append

    assert await run(ctx, job) is State.DONE

    assert synthesizer.requests == []
    assert events == []


# Two executors on one job


@pytest.fixture
def second_table(database_url: str) -> Iterator[Engine]:
    """Other db on the same job table, as a second process would have."""
    db = open_database(database_url)
    yield db
    db.dispose()


async def test_two_runs_of_one_job_at_once_send_each_segment_once_and_stitch_every_script(
    job_table: Engine,
    second_table: Engine,
    tmp_path: Path,
    synthesizer: ToneSynthesizer,
) -> None:
    job = record(job_table, plan_of(str(tmp_path / "out"), texts_of(4, 4)))
    synthesizer.default = Slow(0.005)
    events_a: list[Event] = []
    events_b: list[Event] = []
    a = context(job_table, synthesizer, concurrency=3, on_event=events_a.append)
    b = context(second_table, synthesizer, concurrency=3, on_event=events_b.append)

    states = await asyncio.gather(run(a, job), run(b, job))

    assert State.DONE in states
    assert Counter(synthesizer.texts()) == Counter(
        job.text(s, i) for s in range(4) for i in range(4)
    )
    assert stitched(events_a + events_b) == Counter(f"script-{s}" for s in range(4))
    assert job_row(job_table, job.job_id).state is State.DONE
    for pk in job.all_segments:
        row = segment_row(job_table, pk)
        assert (row.state, row.attempts, row.billed_chars) == (State.DONE, 1, row.chars)
    results_match_the_table(job_table, job)


async def test_a_segment_held_by_the_other_run_still_gets_its_script_stitched(
    job_table: Engine,
    second_table: Engine,
    tmp_path: Path,
    synthesizer: ToneSynthesizer,
) -> None:
    job = record(job_table, plan_of(str(tmp_path / "out"), texts_of(3, 3)))
    # Whichever run claims script 0's first segment holds it until every other segment is
    # done: the other run finishes the rest of script 0 without being able to stitch it.
    held = Gate()
    synthesizer.on_text(job.text(0, 0), held)
    events: list[Event] = []
    a = context(job_table, synthesizer, concurrency=2, on_event=events.append)
    b = context(second_table, synthesizer, concurrency=2, on_event=events.append)
    both = asyncio.gather(run(a, job, workers=3), run(b, job, workers=3))
    await held.wait_arrived()

    def others_done() -> bool:
        return all(
            segment_row(job_table, pk).state is State.DONE
            for pk in job.all_segments
            if pk != job.segments[0][0]
        )

    await until(others_done)
    assert script_row(job_table, job.scripts[0]).state is State.PENDING
    held.release()
    states = await both

    assert State.DONE in states
    assert Counter(synthesizer.texts()) == Counter(
        job.text(s, i) for s in range(3) for i in range(3)
    )
    assert stitched(events) == Counter(f"script-{s}" for s in range(3))
    assert job_row(job_table, job.job_id).state is State.DONE
    results_match_the_table(job_table, job)


async def test_no_stitchers_is_refused_rather_than_a_run_that_never_ends(
    sqlite_url: str, tmp_path: Path, synthesizer: ToneSynthesizer
) -> None:
    db = open_database(sqlite_url)
    job = record(db, plan_of(str(tmp_path / "out"), texts_of(1, 1)))
    ctx = context(db, synthesizer)
    try:
        # A one-segment job takes a few milliseconds.
        async with asyncio.timeout(2):
            try:
                state = await run_job(ctx, job.job_id, workers=2, stitchers=0)
            except ValueError:
                # Refused up front: nothing may have been sent.
                assert synthesizer.requests == []
                return
        assert state is State.DONE
    finally:
        db.dispose()
