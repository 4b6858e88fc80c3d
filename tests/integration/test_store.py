"""The job store on real SQLite and real PostgreSQL: plans, the state machine, races."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine

from pipeline.options import JobOptions, Publish
from pipeline.plan import JobPlan, OutputSpec, PlannedSegment, ScriptPlan
from pipeline.rime.models import MODELS
from pipeline.rime.params import VoiceParams
from pipeline.store import (
    IllegalTransition,
    JobNotFound,
    OutputFile,
    State,
    create_engine_for,
    executors,
    load_plan,
    migrate,
    normalize_url,
    record_plan,
)
from pipeline.store.plans import load_pending_segments, load_script, load_segment
from pipeline.store.productions import ProductionBusy
from pipeline.store.schema import EXECUTORS, JOBS, SCRIPTS, SEGMENTS, metadata
from pipeline.store.states import TRANSITIONS, can_transition, check_transition
from pipeline.store.transitions import (
    NOTHING,
    Claim,
    Next,
    abandon_job,
    bill_segment,
    cancel_job,
    claim_segment,
    claim_stitch,
    fail_script,
    fail_segment,
    finish_script,
    finish_segment,
    record_attempt,
    release_script,
    release_segment,
    requeue_orphans,
    reset_for_resume,
    settle_job,
    start_job,
    take_over_segment,
)
from pipeline.store.views import (
    job_summary,
    list_jobs,
    list_segments,
    outstanding,
    resolve_job_id,
    stitchable_scripts,
)
from tests.fixtures.jobs import ME, row_in, segment_row

T = TypeVar("T")

PARAMS = VoiceParams(
    speaker="cove",
    model_id="mistv2",
    lang="eng",
    sampling_rate=22050,
    speed_alpha=0.9,
    pause_between_brackets=True,
    phonemize_between_brackets=False,
    no_text_normalization=False,
    temperature=0.5,
)
OUTPUT = OutputSpec(formats=("wav", "mp3"), loudness_lufs=-16.0)


def make_plan(scripts: int = 2, segments: int = 3, name: str = "chapter one") -> JobPlan:
    """A plan built by hand: `scripts` scripts of `segments` segments each."""
    return JobPlan(
        name=name,
        manifest="jobs.yaml",
        destination="s3://bucket/prefix",
        scripts=tuple(
            ScriptPlan(
                script_id=f"script-{s}",
                params=PARAMS,
                output=OUTPUT,
                segments=tuple(
                    PlannedSegment(
                        index=i,
                        source=f"Sentence {i} of script {s}. ",
                        text=f"Sentence {i} of script {s}.",
                        pause_after_ms=250 * i,
                        inline_speed_alpha=(1.25,) if i % 2 else (),
                        cache_key=f"{s:04x}{i:060x}",
                    )
                    for i in range(segments)
                ),
                lead_pause_ms=100 * s,
            )
            for s in range(scripts)
        ),
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    migrate(database_url)
    # Room for every racing thread to hold its own connection.
    engine = create_engine_for(database_url, pool_size=12)
    yield engine
    engine.dispose()


@pytest.fixture
def db(engine: sa.Engine) -> Engine:
    return engine


def record(db: Engine, plan: JobPlan) -> str:
    with db.begin() as conn:
        return record_plan(conn, plan)


def segment_pks(db: Engine, job_id: str) -> list[int]:
    with db.begin() as conn:
        return [ref.segment_pk for ref in list_segments(conn, job_id)]


def script_pks(db: Engine, job_id: str) -> list[int]:
    with db.begin() as conn:
        return [row.script_pk for row in job_summary(conn, job_id).scripts]


def state_of(db: Engine, table: sa.Table, pk: object) -> State:
    with db.begin() as conn:
        state = conn.scalar(sa.select(table.c.state).where(table.c.id == pk))
        assert state is not None
        return State(state)


def in_tx(db: Engine, change: Callable[[Connection], T]) -> T:
    with db.begin() as conn:
        return change(conn)


Worker = Callable[[Engine], T]


def one_tx(change: Callable[[Connection], T]) -> Worker[T]:
    """A racing worker that runs `change` in one transaction."""

    def work(db: Engine) -> T:
        return in_tx(db, change)

    return work


class _OnConnection:
    """`begin()` as an Engine has it, on one connection taken before the race starts."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.connection.begin():
            yield self.connection


def race(engine: sa.Engine, workers: list[Worker[T]]) -> list[T]:
    """Run each worker in its own thread on its own connection, released together."""
    barrier = threading.Barrier(len(workers))

    def run(work: Worker[T]) -> T:
        # Connect before the barrier so the threads reach the database together. No transaction
        # is open while waiting: on SQLite, BEGIN IMMEDIATE would hold the others out.
        with engine.connect() as connection:
            barrier.wait(timeout=30)
            return work(_OnConnection(connection))  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        return [f.result() for f in [pool.submit(run, w) for w in workers]]


# The plan, into rows and back


def test_recorded_plan_loads_back_equal_and_all_pending(db: Engine) -> None:
    plan = make_plan()
    job_id = record(db, plan)

    with db.begin() as conn:
        assert load_plan(conn, job_id) == plan
        job = row_in(conn, JOBS, job_id)
        assert (job.name, job.manifest, job.destination) == (
            plan.name,
            plan.manifest,
            plan.destination,
        )
        states = conn.scalars(sa.select(SEGMENTS.c.state).where(SEGMENTS.c.job_id == job_id)).all()
        assert states == [State.PENDING] * 6
        scripts = conn.execute(sa.select(SCRIPTS).order_by(SCRIPTS.c.position)).all()
        assert [s.state for s in scripts] == [State.PENDING, State.PENDING]
        assert [s.chars for s in scripts] == [s.chars for s in plan.scripts]
        assert scripts[0].params["speed_alpha"] == 0.9
        assert scripts[0].output["formats"] == ["wav", "mp3"]
    assert len(job_id) == 12 and int(job_id, 16) >= 0


def test_a_production_has_one_unfinished_job_and_its_jobs_are_separate(db: Engine) -> None:
    plan = make_plan(scripts=1, segments=2)
    first = record(db, plan)
    with pytest.raises(ProductionBusy, match=f"already being rendered by job {first}"):
        record(db, plan)
    # Another production at the same destination is not held up.
    other = record(db, replace(plan, name="another production"))
    in_tx(db, lambda conn: cancel_job(conn, first))

    second = record(db, plan)

    assert len({first, second, other}) == 3
    with db.begin() as conn:
        assert load_plan(conn, first) == load_plan(conn, second) == plan
        assert {j.job_id for j in list_jobs(conn)} == {first, second, other}
    # While the second is unfinished, the first cannot be taken up again either.
    with db.begin() as conn, pytest.raises(ProductionBusy, match=second):
        reset_for_resume(conn, first)


def test_racing_renders_of_one_production_start_exactly_one_job(db: Engine) -> None:
    plan = make_plan(scripts=1, segments=1)
    barrier = threading.Barrier(4)

    def start() -> str | None:
        barrier.wait()
        try:
            return record(db, plan)
        except ProductionBusy:
            return None

    with ThreadPoolExecutor(4) as pool:
        started = [job for job in pool.map(lambda _: start(), range(4)) if job is not None]

    assert len(started) == 1
    with db.begin() as conn:
        assert [j.job_id for j in list_jobs(conn)] == started


def test_loading_an_unknown_job_names_it(db: Engine) -> None:
    with db.begin() as conn, pytest.raises(JobNotFound, match="no job 'abcdef012345'"):
        load_plan(conn, "abcdef012345")


def test_segment_and_script_work_load_by_row_id(db: Engine) -> None:
    plan = make_plan()
    job_id = record(db, plan)
    with db.begin() as conn:
        ref = list_segments(conn, job_id)[4]
        work = load_segment(conn, ref.segment_pk)
        assert (work.job_id, work.script_id, work.state) == (job_id, "script-1", State.PENDING)
        assert work.params == PARAMS
        assert work.segment == plan.scripts[1].segments[1]
        script = load_script(conn, work.script_pk)
        assert (script.job_id, script.destination) == (job_id, plan.destination)
        assert script.plan == plan.scripts[1]


def test_a_segment_with_lexicon_phonemes_is_sent_with_phoneme_markup_read(db: Engine) -> None:
    """Only the segment that holds a lexicon's phonemes gets phonemizeBetweenBrackets."""
    plan = make_plan(scripts=1, segments=2)
    script = plan.scripts[0]
    first, second = script.segments
    marked = replace(
        plan, scripts=(replace(script, segments=(replace(first, phonemes=True), second)),)
    )
    job_id = record(db, marked)
    with db.begin() as conn:
        refs = list_segments(conn, job_id)
        works = [load_segment(conn, ref.segment_pk) for ref in refs]
        pending = load_pending_segments(conn, job_id)
    assert [w.params.phonemize_between_brackets for w in works] == [True, False]
    assert works[0].params == replace(PARAMS, phonemize_between_brackets=True)
    assert works[1].params == PARAMS
    assert [w.params for w in pending] == [w.params for w in works]
    assert [w.segment.phonemes for w in works] == [True, False]


_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
_maybe_float = st.none() | st.floats(allow_nan=False, allow_infinity=False)
_maybe_positive = st.none() | st.floats(min_value=0, exclude_min=True, allow_infinity=False)


@st.composite
def plans(draw: st.DrawFn) -> JobPlan:
    ids = draw(st.lists(_text.filter(bool), min_size=1, max_size=3, unique=True))
    scripts = []
    for script_id in ids:
        model = draw(st.sampled_from(["mist", "mistv2", "arcana"]))
        facts = MODELS[model]
        # Any parameters a plan can hold: VoiceParams refuses values Rime would refuse.
        rates = (
            st.sampled_from(sorted(facts.rate_set))
            if facts.rate_set is not None
            else st.integers(*(facts.rate_range or (8000, 8000)))
        )
        params = VoiceParams(
            speaker=draw(_text.filter(str.strip)),
            model_id=model,
            lang=draw(st.none() | st.sampled_from(sorted(facts.languages))),
            sampling_rate=draw(rates),
            speed_alpha=draw(_maybe_positive),
            pause_between_brackets=draw(st.booleans()),
            phonemize_between_brackets=draw(st.booleans()),
            no_text_normalization=draw(st.booleans()),
            temperature=draw(st.none() | st.floats(0, 1e300)),
            top_p=draw(st.none() | st.floats(0, 1, exclude_min=True)),
            repetition_penalty=draw(_maybe_positive),
        )
        output = OutputSpec(
            formats=tuple(draw(st.lists(st.sampled_from(["wav", "mp3", "ogg"]), max_size=3))),
            loudness_lufs=draw(_maybe_float),
            true_peak_db=draw(st.floats(-10, 0)),
        )
        texts = draw(st.lists(_text, max_size=4))
        segments = tuple(
            PlannedSegment(
                index=i,
                source=draw(_text),
                text=text,
                pause_after_ms=draw(st.integers(0, 10_000)),
                inline_speed_alpha=tuple(draw(st.lists(st.floats(0.1, 3.0), max_size=3))),
                cache_key=draw(_text),
                phonemes=draw(st.booleans()),
            )
            for i, text in enumerate(texts)
        )
        scripts.append(ScriptPlan(script_id, params, output, segments, draw(st.integers(0, 5000))))
    pairs = st.lists(st.tuples(_text, _text), max_size=3).map(tuple)
    options = JobOptions(
        set=draw(pairs),
        voice_map=draw(pairs),
        no_cache=draw(st.booleans()),
        publish=draw(st.sampled_from(Publish)),
        notify=tuple(draw(st.lists(_text, max_size=2))),
        schedule=draw(st.none() | _text),
        keep_releases=draw(st.integers(1, 1000)),
    )
    return JobPlan(draw(_text), draw(_text), draw(_text), tuple(scripts), options)


# Function-scoped fixtures are fine here: every example records a job of its own.
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=plans())
def test_any_plan_round_trips_exactly(db: Engine, plan: JobPlan) -> None:
    job_id = record(db, plan)
    with db.begin() as conn:
        assert load_plan(conn, job_id) == plan
        # Ended, so the next example may record a job of the same production.
        cancel_job(conn, job_id)


# The state machine


def test_transition_table() -> None:
    assert can_transition(State.PENDING, State.RUNNING)
    assert can_transition(State.RUNNING, State.PENDING)
    assert can_transition(State.FAILED, State.PENDING)
    assert not can_transition(State.DONE, State.PENDING)
    # A cancelled job can be resumed (or submitted) again.
    assert can_transition(State.CANCELLED, State.PENDING)
    assert not can_transition(State.CANCELLED, State.RUNNING)
    assert not can_transition(State.PENDING, State.DONE)
    assert set(TRANSITIONS) == set(State)
    with pytest.raises(IllegalTransition, match="segment is done; it cannot become running"):
        check_transition("segment", [State.DONE], State.RUNNING)


def test_state_values_are_the_stored_strings(db: Engine) -> None:
    job_id = record(db, make_plan(scripts=1, segments=1))
    with db.begin() as conn:
        raw = conn.execute(sa.text("SELECT state FROM jobs")).scalar_one()
    assert raw == "pending" == State.PENDING
    with db.begin() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(sa.text("UPDATE jobs SET state = 'paused' WHERE id = :id"), {"id": job_id})


def test_claim_finish_and_timestamps(db: Engine) -> None:
    job_id = record(db, make_plan(scripts=1, segments=2))
    first, second = segment_pks(db, job_id)
    before = datetime.now(UTC)

    assert in_tx(db, lambda s: claim_segment(s, first, ME)) is True
    assert in_tx(db, lambda s: claim_segment(s, first, ME)) is False
    assert state_of(db, JOBS, job_id) == State.RUNNING
    assert in_tx(db, lambda s: finish_segment(s, first, ME, audio_seconds=1.25)) is not None
    assert in_tx(db, lambda s: finish_segment(s, first, ME, audio_seconds=9.0)) is None
    assert in_tx(db, lambda s: finish_segment(s, second, ME, audio_seconds=1.0)) is None

    with db.begin() as conn:
        segment = row_in(conn, SEGMENTS, first)
        job = row_in(conn, JOBS, job_id)
        script = row_in(conn, SCRIPTS, segment.script_pk)
        assert (segment.state, segment.audio_seconds) == (State.DONE, 1.25)
        assert row_in(conn, SEGMENTS, second).state == State.PENDING
        for stamp in (segment.started_at, segment.finished_at, job.started_at, script.started_at):
            assert stamp is not None and stamp.tzinfo is not None
            assert stamp.utcoffset() == timedelta(0)
            assert before <= stamp <= datetime.now(UTC)
        assert segment.started_at is not None and segment.finished_at is not None
        assert segment.started_at <= segment.finished_at


def test_a_scripts_and_its_jobs_start_are_their_first_claims(db: Engine) -> None:
    job_id = record(db, make_plan(scripts=2, segments=2))
    pks = segment_pks(db, job_id)
    for pk in (pks[2], pks[0], pks[3], pks[1]):
        assert in_tx(db, lambda s, pk=pk: claim_segment(s, pk, ME)) is True

    with db.begin() as conn:
        segments = [row_in(conn, SEGMENTS, pk) for pk in pks]
        job = row_in(conn, JOBS, job_id)
        for script_pk in {segment.script_pk for segment in segments}:
            claimed = [s.started_at for s in segments if s.script_pk == script_pk]
            assert row_in(conn, SCRIPTS, script_pk).started_at == min(claimed)
        assert (job.state, job.started_at) == (State.RUNNING, segments[2].started_at)


def test_starting_a_job_twice_only_wins_once(db: Engine) -> None:
    job_id = record(db, make_plan(scripts=1, segments=1))
    assert in_tx(db, lambda s: start_job(s, job_id)) is True
    assert in_tx(db, lambda s: start_job(s, job_id)) is False


def test_attempts_bill_every_request_that_reached_the_server(
    db: Engine,
) -> None:
    job_id = record(db, make_plan(scripts=1, segments=2))
    seg, other = segment_pks(db, job_id)
    assert in_tx(db, lambda s: claim_segment(s, seg, ME))
    in_tx(db, lambda s: record_attempt(s, seg, billed_chars=26, error="HTTP 503"))
    in_tx(db, lambda s: record_attempt(s, seg, billed_chars=0, error="connect refused"))
    in_tx(db, lambda s: record_attempt(s, seg, billed_chars=26))
    in_tx(db, lambda s: record_attempt(s, other, billed_chars=26))

    with db.begin() as conn:
        row = row_in(conn, SEGMENTS, seg)
        assert (row.attempts, row.billed_chars, row.last_error) == (3, 52, "connect refused")
        summary = job_summary(conn, job_id)
        assert summary.scripts[0].billed_chars == 78
        assert summary.scripts[0].attempts == 4
        assert summary.job.billed_chars == 78
        assert summary.job.chars == make_plan(scripts=1, segments=2).chars == 46
    with db.begin() as conn, pytest.raises(ValueError):
        record_attempt(conn, seg, billed_chars=-1)


def test_long_errors_are_clipped(db: Engine) -> None:
    job_id = record(db, make_plan(scripts=1, segments=1))
    (seg,) = segment_pks(db, job_id)
    in_tx(db, lambda s: record_attempt(s, seg, billed_chars=0, error="x" * 10_000))
    with db.begin() as conn:
        error = row_in(conn, SEGMENTS, seg).last_error
    assert error is not None and len(error) == 2000 and error.endswith("…")


def test_a_failed_segment_fails_its_script_and_stops_its_claims(
    db: Engine,
) -> None:
    job_id = record(db, make_plan(scripts=2, segments=2))
    a0, a1, b0, _ = segment_pks(db, job_id)
    assert in_tx(db, lambda s: fail_segment(s, a0, ME, "nope")) is None  # not claimed
    assert in_tx(db, lambda s: claim_segment(s, a0, ME))
    assert in_tx(db, lambda s: fail_segment(s, a0, ME, "HTTP 400: bad speaker")) is not None

    with db.begin() as conn:
        summary = job_summary(conn, job_id)
    failed = summary.scripts[0]
    assert (failed.state, failed.segments_failed) == (State.FAILED, 1)
    assert failed.error == "segment 0: HTTP 400: bad speaker"
    assert in_tx(db, lambda s: claim_segment(s, a1, ME)) is False
    assert in_tx(db, lambda s: claim_segment(s, b0, ME)) is True


def test_a_released_segment_can_be_claimed_again(db: Engine) -> None:
    job_id = record(db, make_plan(scripts=1, segments=1))
    (seg,) = segment_pks(db, job_id)
    assert in_tx(db, lambda s: claim_segment(s, seg, ME))
    assert in_tx(db, lambda s: release_segment(s, seg, ME, "HTTP 429"))
    assert in_tx(db, lambda s: release_segment(s, seg, ME)) is False
    with db.begin() as conn:
        row = row_in(conn, SEGMENTS, seg)
        assert (row.state, row.last_error, row.started_at) == (State.PENDING, "HTTP 429", None)
    assert in_tx(db, lambda s: claim_segment(s, seg, ME))


def test_claims_of_dead_executors_are_requeued_and_live_ones_kept(db: Engine) -> None:
    job_id = record(db, make_plan(scripts=1, segments=2))
    orphan, live = segment_pks(db, job_id)
    in_tx(db, lambda s: executors.register(s, "alive", executors.WORKER))
    in_tx(db, lambda s: executors.register(s, "dead", executors.WORKER))
    with db.begin() as conn:
        conn.execute(
            sa.update(EXECUTORS)
            .where(EXECUTORS.c.id == "dead")
            .values(heartbeat_at=datetime.now(UTC) - timedelta(hours=1))
        )
    assert in_tx(db, lambda s: claim_segment(s, orphan, Claim("dead.1", "dead")))
    assert in_tx(db, lambda s: claim_segment(s, live, Claim("alive.1", "alive")))
    # Claimed an hour ago, but its executor beats: long work is not mistaken for a dead one.
    with db.begin() as conn:
        conn.execute(sa.update(SEGMENTS).values(started_at=datetime.now(UTC) - timedelta(hours=1)))

    cutoff = datetime.now(UTC) - timedelta(minutes=10)
    assert in_tx(db, lambda s: requeue_orphans(s, dead_before=cutoff)) == (1, 0)
    assert state_of(db, SEGMENTS, orphan) == State.PENDING
    assert state_of(db, SEGMENTS, live) == State.RUNNING
    assert segment_row(db, orphan).claim is None
    # The dead executor's late finish cannot land; the live one's does.
    assert (
        in_tx(db, lambda s: finish_segment(s, orphan, Claim("dead.1", "dead"), audio_seconds=1))
        is None
    )
    assert in_tx(db, lambda s: finish_segment(s, live, Claim("alive.1", "alive"), audio_seconds=1))


def test_a_claim_is_taken_over_only_from_a_dead_executor(db: Engine) -> None:
    job_id = record(db, make_plan(scripts=1, segments=1))
    (seg,) = segment_pks(db, job_id)
    first, second = Claim("a.1", "a"), Claim("b.1", "b")
    in_tx(db, lambda s: executors.register(s, "a", executors.WORKER))
    assert in_tx(db, lambda s: claim_segment(s, seg, first))
    now = datetime.now(UTC)
    # a beats: nobody takes its claim, however long ago it was made.
    assert not in_tx(
        db, lambda s: take_over_segment(s, seg, second, dead_before=now - timedelta(seconds=30))
    )
    # a's heartbeat is older than the cutoff: b takes it over, and a can no longer finish it.
    assert in_tx(
        db, lambda s: take_over_segment(s, seg, second, dead_before=now + timedelta(seconds=1))
    )
    assert segment_row(db, seg).claim == "b.1"
    assert in_tx(db, lambda s: finish_segment(s, seg, first, audio_seconds=1.0)) is None
    assert in_tx(db, lambda s: fail_segment(s, seg, first, "late")) is None
    assert not in_tx(db, lambda s: release_segment(s, seg, first))
    assert in_tx(db, lambda s: finish_segment(s, seg, second, audio_seconds=1.0)) is not None


# Scripts and jobs roll up


def finish_all(db: Engine, ids: list[int]) -> None:
    for seg in ids:
        assert in_tx(db, lambda s, seg=seg: claim_segment(s, seg, ME))
        assert in_tx(db, lambda s, seg=seg: finish_segment(s, seg, ME, audio_seconds=0.5))


def test_stitch_is_claimed_once_and_only_when_every_segment_is_done(
    db: Engine,
) -> None:
    job_id = record(db, make_plan(scripts=1, segments=3))
    ids = segment_pks(db, job_id)
    (script,) = script_pks(db, job_id)
    finish_all(db, ids[:2])
    assert in_tx(db, lambda s: claim_stitch(s, script, ME)) is False
    assert in_tx(db, lambda s: stitchable_scripts(s, job_id)) == []

    finish_all(db, ids[2:])
    assert in_tx(db, lambda s: stitchable_scripts(s, job_id)) == [script]
    assert in_tx(db, lambda s: claim_stitch(s, script, ME)) is True
    assert in_tx(db, lambda s: claim_stitch(s, script, ME)) is False
    assert in_tx(db, lambda s: release_script(s, script, ME)) is True
    assert in_tx(db, lambda s: claim_stitch(s, script, ME)) is True

    outputs = [
        OutputFile("wav", "s3://bucket/prefix/script-0.wav", "ab" * 32, 4410),
        OutputFile("mp3", "s3://bucket/prefix/script-0.mp3", "cd" * 32, 1024),
    ]
    done = in_tx(
        db,
        lambda s: finish_script(s, script, ME, audio_seconds=1.5, outputs=outputs),
    )
    assert done == Next(settle=job_id)  # the job's only script: nothing else left to run
    assert in_tx(db, lambda s: settle_job(s, job_id)) == State.DONE
    with db.begin() as conn:
        summary = job_summary(conn, job_id)
    row = summary.scripts[0]
    assert (row.state, row.outputs, row.audio_seconds) == (State.DONE, tuple(outputs), 1.5)
    assert row.output_uris == tuple(o.uri for o in outputs)
    assert (summary.job.state, summary.job.scripts_done, summary.job.audio_seconds) == (
        State.DONE,
        1,
        1.5,
    )
    assert summary.job.finished_at is not None


def test_a_scripts_loudness_and_warnings_are_kept_and_reach_its_results(db: Engine) -> None:
    from pipeline.loudness import Loudness, LoudnessRecord
    from pipeline.results import results_document

    job_id = record(db, make_plan(scripts=1, segments=1))
    finish_all(db, segment_pks(db, job_id))
    (script,) = script_pks(db, job_id)
    assert in_tx(db, lambda s: claim_stitch(s, script, ME)) is True
    loudness = LoudnessRecord(-16.0, -1.0, 9.4, True, -17.3, 2.9, -1.1, "mp3")
    warning = loudness.warning()
    assert warning is not None
    outputs = [
        OutputFile("wav", "out/s.wav", "ab" * 32, 4410, Loudness(-16.1, -1.0, 2.9)),
        OutputFile("mp3", "out/s.mp3", "cd" * 32, 1024, Loudness(-17.3, -1.1, 2.9)),
        OutputFile("srt", "out/s.srt", "ef" * 32, 99),
    ]
    in_tx(
        db,
        lambda s: finish_script(
            s,
            script,
            ME,
            audio_seconds=2.0,
            outputs=outputs,
            loudness=loudness,
            warnings=[warning],
        ),
    )
    with db.begin() as conn:
        summary = job_summary(conn, job_id)
    assert summary.scripts[0].loudness == loudness
    assert summary.scripts[0].outputs == tuple(outputs)
    assert summary.scripts[0].warnings == (warning,)
    listed = results_document(summary)["scripts"]
    assert isinstance(listed, list)
    assert listed[0]["loudness"]["integrated_lufs"] == -17.3
    assert listed[0]["loudness"]["format"] == "mp3"
    assert [o["loudness"] for o in listed[0]["outputs"]] == [
        {"integrated_lufs": -16.1, "true_peak_dbtp": -1.0, "range_lu": 2.9},
        {"integrated_lufs": -17.3, "true_peak_dbtp": -1.1, "range_lu": 2.9},
        None,
    ]
    assert listed[0]["warnings"] == [
        "mp3: loudness -17.3 LUFS misses the target -16 LUFS by 1.3 LU"
    ]

    # A row written before outputs were measured reads back as unmeasured, with no migration.
    old = [{"format": "wav", "uri": "out/s.wav", "sha256": "ab" * 32, "bytes": 4410}]
    with db.begin() as conn:
        conn.execute(sa.update(SCRIPTS).where(SCRIPTS.c.id == script).values(outputs=old))
        (row,) = job_summary(conn, job_id).scripts
    assert row.outputs == (OutputFile("wav", "out/s.wav", "ab" * 32, 4410, None),)


def test_only_the_last_segment_to_finish_makes_its_stitch_due(
    db: Engine,
) -> None:
    job_id = record(db, make_plan(scripts=2, segments=3))
    a0, a1, a2, b0, _, _ = segment_pks(db, job_id)
    script_a, _ = script_pks(db, job_id)
    for seg in (a0, a1, a2, b0):
        assert in_tx(db, lambda s, seg=seg: claim_segment(s, seg, ME))
    # From the cache (no request), then two synthesized: only requests count as attempts.
    assert in_tx(db, lambda s: finish_segment(s, a0, ME, audio_seconds=1.0)) == NOTHING
    in_tx(db, lambda s: bill_segment(s, a1, 20))
    assert in_tx(db, lambda s: finish_segment(s, a1, ME, audio_seconds=1.0, synthesized=True)) == (
        NOTHING
    )
    assert in_tx(db, lambda s: finish_segment(s, b0, ME, audio_seconds=1.0)) == NOTHING
    in_tx(db, lambda s: bill_segment(s, a2, 21))
    last = in_tx(db, lambda s: finish_segment(s, a2, ME, audio_seconds=1.0, synthesized=True))
    assert last == Next(stitch=script_a)
    with db.begin() as conn:
        summary = job_summary(conn, job_id)
        assert [row_in(conn, SEGMENTS, seg).attempts for seg in (a0, a1, a2)] == [0, 1, 1]
    assert (summary.scripts[0].attempts, summary.scripts[0].billed_chars) == (2, 41)
    assert in_tx(db, lambda s: outstanding(s, job_id)).stitches == (script_a,)


def test_outstanding_work_is_pending_segments_in_plan_order_and_due_stitches(
    db: Engine,
) -> None:
    job_id = record(db, make_plan(scripts=3, segments=2))
    ids = segment_pks(db, job_id)
    scripts = script_pks(db, job_id)
    finish_all(db, ids[2:4])  # the second script is complete
    assert in_tx(db, lambda s: claim_segment(s, ids[4], ME))  # one running
    todo = in_tx(db, lambda s: outstanding(s, job_id))
    assert todo.segments == (ids[0], ids[1], ids[5])
    assert todo.stitches == (scripts[1],)


def test_a_refused_key_abandons_what_waits_and_keeps_it_resumable(
    db: Engine,
) -> None:
    job_id = record(db, make_plan(scripts=3, segments=2))
    a0, a1, b0, b1, c0, c1 = segment_pks(db, job_id)
    _, script_b, script_c = script_pks(db, job_id)
    finish_all(db, [b0, b1])
    assert in_tx(db, lambda s: claim_stitch(s, script_b, ME))  # being stitched
    assert in_tx(db, lambda s: claim_segment(s, a0, ME))
    assert in_tx(db, lambda s: fail_segment(s, a0, ME, "HTTP 401")) == NOTHING  # b runs
    assert in_tx(db, lambda s: abandon_job(s, job_id, "not sent")) == NOTHING
    with db.begin() as conn:
        summary = job_summary(conn, job_id)
        assert row_in(conn, SEGMENTS, c0).state == State.PENDING
    assert [s.state for s in summary.scripts] == [State.FAILED, State.RUNNING, State.FAILED]
    assert summary.scripts[2].error == "not sent"
    assert in_tx(db, lambda s: claim_segment(s, c1, ME)) is False
    # The stitch under way ends the job.
    done = in_tx(db, lambda s: finish_script(s, script_b, ME, audio_seconds=1, outputs=[]))
    assert done == Next(settle=job_id)
    assert in_tx(db, lambda s: settle_job(s, job_id)) == State.FAILED
    assert in_tx(db, lambda s: reset_for_resume(s, job_id)) == 1  # a0; c0, c1 were pending
    assert in_tx(db, lambda s: outstanding(s, job_id)).segments == (a0, a1, c0, c1)
    assert script_c in script_pks(db, job_id)


def test_job_settles_failed_only_when_nothing_is_left_to_run(
    db: Engine,
) -> None:
    job_id = record(db, make_plan(scripts=2, segments=1))
    a, b = segment_pks(db, job_id)
    script_a, script_b = script_pks(db, job_id)
    assert in_tx(db, lambda s: claim_segment(s, a, ME))
    assert in_tx(db, lambda s: fail_segment(s, a, ME, "HTTP 401"))
    assert in_tx(db, lambda s: settle_job(s, job_id)) == State.RUNNING

    finish_all(db, [b])
    assert in_tx(db, lambda s: claim_stitch(s, script_b, ME))
    assert in_tx(
        db,
        lambda s: finish_script(s, script_b, ME, audio_seconds=1, outputs=[]),
    )
    assert in_tx(db, lambda s: settle_job(s, job_id)) == State.FAILED
    with db.begin() as conn:
        job = row_in(conn, JOBS, job_id)
        assert job.error == "1 script(s) failed"
        assert row_in(conn, SCRIPTS, script_a).state == State.FAILED


def test_a_stitch_failure_fails_the_script(db: Engine) -> None:
    job_id = record(db, make_plan(scripts=1, segments=1))
    (script,) = script_pks(db, job_id)
    finish_all(db, segment_pks(db, job_id))
    assert in_tx(db, lambda s: claim_stitch(s, script, ME))
    assert in_tx(db, lambda s: fail_script(s, script, ME, "ffmpeg exited 1"))
    assert in_tx(db, lambda s: fail_script(s, script, ME, "again")) is None
    assert in_tx(db, lambda s: settle_job(s, job_id)) == State.FAILED


def test_resume_resets_unfinished_work_and_keeps_done_work(
    db: Engine,
) -> None:
    job_id = record(db, make_plan(scripts=2, segments=2))
    a0, a1, b0, b1 = segment_pks(db, job_id)
    script_a, _ = script_pks(db, job_id)
    finish_all(db, [a0, a1, b0])
    assert in_tx(db, lambda s: claim_stitch(s, script_a, ME))  # the stitcher then died
    assert in_tx(db, lambda s: claim_segment(s, b1, ME))
    assert in_tx(db, lambda s: fail_segment(s, b1, ME, "HTTP 500 five times"))
    assert in_tx(db, lambda s: fail_script(s, script_a, ME, "crashed")) is not None
    assert in_tx(db, lambda s: settle_job(s, job_id)) == State.FAILED

    assert in_tx(db, lambda s: reset_for_resume(s, job_id)) == 1
    with db.begin() as conn:
        states = {ref.segment_pk: ref.state for ref in list_segments(conn, job_id)}
        summary = job_summary(conn, job_id)
    assert states == {a0: State.DONE, a1: State.DONE, b0: State.DONE, b1: State.PENDING}
    assert [s.state for s in summary.scripts] == [State.PENDING, State.PENDING]
    assert [s.error for s in summary.scripts] == [None, None]
    assert (summary.job.state, summary.job.error, summary.job.finished_at) == (
        State.PENDING,
        None,
        None,
    )
    # The resumed job picks up where it stopped: one stitch due, one segment to render.
    assert in_tx(db, lambda s: stitchable_scripts(s, job_id)) == [script_a]
    assert in_tx(db, lambda s: claim_segment(s, b1, ME)) is True


def test_a_done_job_cannot_be_resumed_and_a_cancelled_one_can(db: Engine) -> None:
    done = record(db, make_plan(scripts=1, segments=1))
    finish_all(db, segment_pks(db, done))
    (script,) = script_pks(db, done)
    assert in_tx(db, lambda s: claim_stitch(s, script, ME))
    assert in_tx(db, lambda s: finish_script(s, script, ME, audio_seconds=1, outputs=[]))
    assert in_tx(db, lambda s: settle_job(s, done)) is State.DONE
    with pytest.raises(IllegalTransition, match=f"job {done} is done"):
        in_tx(db, lambda s: reset_for_resume(s, done))
    with pytest.raises(JobNotFound):
        in_tx(db, lambda s: reset_for_resume(s, "000000000000"))

    cancelled = record(db, make_plan(scripts=2, segments=2))
    first, running, *rest = segment_pks(db, cancelled)
    finish_all(db, [first])
    assert in_tx(db, lambda s: claim_segment(s, running, ME))
    in_tx(db, lambda s: cancel_job(s, cancelled))
    # Everything but the finished segment comes back, unclaimed.
    assert in_tx(db, lambda s: reset_for_resume(s, cancelled)) == 3
    assert state_of(db, JOBS, cancelled) == State.PENDING
    assert [state_of(db, SEGMENTS, pk) for pk in (first, running, *rest)] == [
        State.DONE,
        *[State.PENDING] * 3,
    ]
    assert segment_row(db, running).claim is None
    assert {state_of(db, SCRIPTS, pk) for pk in script_pks(db, cancelled)} == {State.PENDING}


def test_cancel_stops_unfinished_work(db: Engine) -> None:
    job_id = record(db, make_plan(scripts=1, segments=3))
    done, running, pending = segment_pks(db, job_id)
    finish_all(db, [done])
    assert in_tx(db, lambda s: claim_segment(s, running, ME))

    assert in_tx(db, lambda s: cancel_job(s, job_id)) == 2
    assert state_of(db, JOBS, job_id) == State.CANCELLED
    assert state_of(db, SEGMENTS, done) == State.DONE
    assert state_of(db, SEGMENTS, running) == State.CANCELLED
    # The worker still on it loses its finish, and nothing can be claimed any more.
    assert in_tx(db, lambda s: finish_segment(s, running, ME, audio_seconds=1)) is None
    assert in_tx(db, lambda s: claim_segment(s, pending, ME)) is False
    with pytest.raises(IllegalTransition, match="is cancelled; it cannot become cancelled"):
        in_tx(db, lambda s: cancel_job(s, job_id))


# Reading


def test_list_jobs_newest_first_with_totals(db: Engine) -> None:
    older = record(db, make_plan(scripts=1, segments=2, name="older"))
    newer = record(db, make_plan(scripts=3, segments=1, name="newer"))
    finish_all(db, segment_pks(db, older)[:1])
    in_tx(db, lambda s: cancel_job(s, newer))
    with db.begin() as conn:
        rows = list_jobs(conn)
        cancelled = list_jobs(conn, state=State.CANCELLED)
        limited = list_jobs(conn, limit=1)
    assert [(r.job_id, r.name, r.scripts) for r in rows] == [
        (newer, "newer", 3),
        (older, "older", 1),
    ]
    assert rows[1].state == State.RUNNING and rows[0].state == State.CANCELLED
    assert rows[1].chars == make_plan(scripts=1, segments=2).chars
    assert [r.job_id for r in cancelled] == [newer]
    assert [r.job_id for r in limited] == [newer]


def test_job_summary_counts_segments_per_script(db: Engine) -> None:
    job_id = record(db, make_plan(scripts=2, segments=3))
    ids = segment_pks(db, job_id)
    finish_all(db, ids[:2] + ids[3:4])
    with db.begin() as conn:
        summary = job_summary(conn, job_id)
    assert [(s.script_id, s.segments, s.segments_done) for s in summary.scripts] == [
        ("script-0", 3, 2),
        ("script-1", 3, 1),
    ]
    with db.begin() as conn, pytest.raises(JobNotFound):
        job_summary(conn, "ffffffffffff")


def test_job_ids_resolve_from_a_unique_prefix(db: Engine) -> None:
    job_id = record(db, make_plan(scripts=1, segments=1))
    with db.begin() as conn:
        assert resolve_job_id(conn, job_id) == job_id
        assert resolve_job_id(conn, f" {job_id[:5].upper()} ") == job_id
        with pytest.raises(JobNotFound, match="is not a job id"):
            resolve_job_id(conn, "%")
        other_first = "0" if job_id[0] != "0" else "1"
        with pytest.raises(JobNotFound, match="no job"):
            resolve_job_id(conn, other_first)
        # Two jobs sharing a prefix: the prefix alone is ambiguous.
        twin = job_id[:6] + ("000000" if job_id[6:] != "000000" else "111111")
        conn.execute(
            sa.insert(JOBS).values(
                id=twin, name="x", manifest="m", destination="d", created_at=datetime.now(UTC)
            )
        )
        with pytest.raises(JobNotFound, match="several"):
            resolve_job_id(conn, job_id[:6])


# Named like a secret, holding none: a segment's content hash, the request id a client chose
# as its idempotency key, and the SHA-256 of a service token (the token itself is never kept).
NOT_SECRETS = {
    ("segments", "cache_key"),
    ("idempotency_keys", "key"),
    ("api_tokens", "token_hash"),
}


def test_no_column_could_hold_an_api_key() -> None:
    columns = {
        (table.name, c.name) for table in metadata.tables.values() for c in table.columns
    } - NOT_SECRETS
    assert not {name for _, name in columns if "key" in name}
    assert not {name for _, name in columns if "token" in name or "secret" in name}
    assert {(t.name, c.name) for t in metadata.tables.values() for c in t.columns} >= NOT_SECRETS


# Engines and URLs


def test_postgresql_urls_use_psycopg_3() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///rime-batch.db").drivername == "sqlite"


def test_sqlite_connections_are_set_up(sqlite_url: str) -> None:
    engine = create_engine_for(sqlite_url)
    try:
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        engine.dispose()


def test_a_sqlite_writer_that_waits_too_long_gets_sqlalchemys_operational_error(
    sqlite_url: str,
) -> None:
    engine = create_engine_for(sqlite_url)
    holder = create_engine_for(sqlite_url)
    try:
        with holder.begin() as held:
            held.exec_driver_sql("PRAGMA user_version = 1")  # holds the write lock
            with engine.connect() as waiting:
                # Set on the driver's connection: a statement of SQLAlchemy's would begin first.
                driver = waiting.connection.dbapi_connection
                assert driver is not None
                driver.execute("PRAGMA busy_timeout = 50")
                # The error the workers retry and `reach` explains, not the driver's own.
                with pytest.raises(sa.exc.OperationalError, match="database is locked"):
                    waiting.begin()
        with engine.begin() as connection:  # the lock is back: a writer begins at once
            assert connection.exec_driver_sql("PRAGMA user_version").scalar() == 1
    finally:
        engine.dispose()
        holder.dispose()


# Races between real threads on separate connections


def test_concurrent_claims_of_a_segment_have_exactly_one_winner(engine: sa.Engine) -> None:
    db = engine
    job_id = record(db, make_plan(scripts=1, segments=12))
    for seg in segment_pks(db, job_id):
        results = race(engine, [one_tx(lambda s, seg=seg: claim_segment(s, seg, ME))] * 8)
        assert sorted(results) == [False] * 7 + [True]
        assert state_of(db, SEGMENTS, seg) == State.RUNNING


def test_the_last_segments_finishing_together_give_exactly_one_stitcher(
    engine: sa.Engine,
) -> None:
    db = engine
    job_id = record(db, make_plan(scripts=8, segments=4))
    refs = in_tx(db, lambda s: list_segments(s, job_id))
    for ref in refs:
        assert in_tx(db, lambda s, ref=ref: claim_segment(s, ref.segment_pk, ME))

    def finisher(segment_pk: int) -> Worker[Next | None]:
        return one_tx(lambda s: finish_segment(s, segment_pk, ME, audio_seconds=1.0))

    for script_pk in script_pks(db, job_id):
        mine = [r for r in refs if r.script_pk == script_pk]
        results = race(engine, [finisher(r.segment_pk) for r in mine])
        assert results.count(Next(stitch=script_pk)) == 1 and results.count(NOTHING) == 3
        # Told once, and the stitch is then claimed once.
        assert in_tx(db, lambda s, pk=script_pk: claim_stitch(s, pk, ME)) is True
        assert state_of(db, SCRIPTS, script_pk) == State.RUNNING


def test_concurrent_stitch_claims_have_exactly_one_winner(engine: sa.Engine) -> None:
    db = engine
    job_id = record(db, make_plan(scripts=4, segments=2))
    finish_all(db, segment_pks(db, job_id))
    for script_pk in script_pks(db, job_id):
        results = race(engine, [one_tx(lambda s, pk=script_pk: claim_stitch(s, pk, ME))] * 6)
        assert results.count(True) == 1


def test_the_last_scripts_finishing_together_settle_the_job(engine: sa.Engine) -> None:
    db = engine
    job_id = record(db, make_plan(scripts=4, segments=1))
    finish_all(db, segment_pks(db, job_id))
    pks = script_pks(db, job_id)
    for pk in pks:
        assert in_tx(db, lambda s, pk=pk: claim_stitch(s, pk, ME))

    def stitched(pk: int) -> Worker[Next | None]:
        return one_tx(
            lambda s: finish_script(
                s,
                pk,
                ME,
                audio_seconds=2.0,
                outputs=[OutputFile("wav", f"out/{pk}.wav", "f" * 64, 44)],
            )
        )

    results = race(engine, [stitched(pk) for pk in pks])
    assert results.count(Next(settle=job_id)) == 1 and results.count(NOTHING) == 3
    assert in_tx(db, lambda s: settle_job(s, job_id)) == State.DONE
    assert state_of(db, JOBS, job_id) == State.DONE
    # A stitch reported twice (a redelivered task) changes nothing.
    assert in_tx(db, lambda s: finish_script(s, pks[0], ME, audio_seconds=9.0, outputs=[])) is None


def test_scripts_failing_together_settle_the_job_once(engine: sa.Engine) -> None:
    db = engine
    job_id = record(db, make_plan(scripts=4, segments=2))
    firsts = [ids[0] for ids in _by_script(db, job_id)]
    for seg in firsts:
        assert in_tx(db, lambda s, seg=seg: claim_segment(s, seg, ME))
    results = race(
        engine, [one_tx(lambda s, seg=seg: fail_segment(s, seg, ME, "HTTP 400")) for seg in firsts]
    )
    assert results.count(Next(settle=job_id)) == 1 and results.count(NOTHING) == 3
    assert in_tx(db, lambda s: settle_job(s, job_id)) == State.FAILED


def _by_script(db: Engine, job_id: str) -> list[list[int]]:
    refs = in_tx(db, lambda s: list_segments(s, job_id))
    grouped: dict[int, list[int]] = {}
    for ref in refs:
        grouped.setdefault(ref.script_pk, []).append(ref.segment_pk)
    return list(grouped.values())
