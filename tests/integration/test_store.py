"""The job store on real SQLite and real PostgreSQL: plans, the state machine, races."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from pipeline.plan import JobPlan, OutputSpec, PlannedSegment, ScriptPlan
from pipeline.rime.models import MODELS
from pipeline.rime.params import VoiceParams
from pipeline.store import (
    IllegalTransition,
    JobNotFound,
    OutputFile,
    State,
    create_engine_for,
    load_plan,
    migrate,
    normalize_url,
    record_plan,
    session_factory,
)
from pipeline.store.plans import load_script, load_segment
from pipeline.store.schema import Base, JobRow, ScriptRow, SegmentRow
from pipeline.store.states import TRANSITIONS, can_transition, check_transition
from pipeline.store.transitions import (
    NOTHING,
    Next,
    abandon_job,
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
    requeue_stale,
    reset_for_resume,
    settle_job,
    start_job,
)
from pipeline.store.views import (
    job_summary,
    list_jobs,
    list_segments,
    outstanding,
    resolve_job_id,
    stitchable_scripts,
)

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
def sessions(engine: sa.Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def record(sessions: sessionmaker[Session], plan: JobPlan) -> str:
    with sessions.begin() as session:
        return record_plan(session, plan)


def segment_pks(sessions: sessionmaker[Session], job_id: str) -> list[int]:
    with sessions.begin() as session:
        return [ref.segment_pk for ref in list_segments(session, job_id)]


def script_pks(sessions: sessionmaker[Session], job_id: str) -> list[int]:
    with sessions.begin() as session:
        return [row.script_pk for row in job_summary(session, job_id).scripts]


def state_of(
    sessions: sessionmaker[Session],
    model: type[JobRow] | type[ScriptRow] | type[SegmentRow],
    pk: object,
) -> State:
    with sessions.begin() as session:
        state = session.scalar(sa.select(model.state).where(model.id == pk))
        assert state is not None
        return state


def in_tx(sessions: sessionmaker[Session], change: Callable[[Session], T]) -> T:
    with sessions.begin() as session:
        return change(session)


Worker = Callable[[sessionmaker[Session]], T]


def one_tx(change: Callable[[Session], T]) -> Worker[T]:
    """A racing worker that runs `change` in one transaction."""

    def work(sessions: sessionmaker[Session]) -> T:
        return in_tx(sessions, change)

    return work


def race(engine: sa.Engine, workers: list[Worker[T]]) -> list[T]:
    """Run each worker in its own thread on its own connection, released together."""
    barrier = threading.Barrier(len(workers))

    def run(work: Worker[T]) -> T:
        # Connect before the barrier so the threads reach the database together. No transaction
        # is open while waiting: on SQLite, BEGIN IMMEDIATE would hold the others out.
        with engine.connect() as connection:
            barrier.wait(timeout=30)
            return work(sessionmaker(bind=connection))

    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        return [f.result() for f in [pool.submit(run, w) for w in workers]]


# The plan, into rows and back


def test_recorded_plan_loads_back_equal_and_all_pending(sessions: sessionmaker[Session]) -> None:
    plan = make_plan()
    job_id = record(sessions, plan)

    with sessions.begin() as session:
        assert load_plan(session, job_id) == plan
        job = session.get_one(JobRow, job_id)
        assert (job.name, job.manifest, job.destination) == (
            plan.name,
            plan.manifest,
            plan.destination,
        )
        states = session.scalars(
            sa.select(SegmentRow.state).where(SegmentRow.job_id == job_id)
        ).all()
        assert states == [State.PENDING] * 6
        scripts = session.scalars(sa.select(ScriptRow).order_by(ScriptRow.position)).all()
        assert [s.state for s in scripts] == [State.PENDING, State.PENDING]
        assert [s.chars for s in scripts] == [s.chars for s in plan.scripts]
        assert scripts[0].params["speed_alpha"] == 0.9
        assert scripts[0].output["formats"] == ["wav", "mp3"]
    assert len(job_id) == 12 and int(job_id, 16) >= 0


def test_two_jobs_of_the_same_plan_are_separate(sessions: sessionmaker[Session]) -> None:
    plan = make_plan(scripts=1, segments=2)
    first, second = record(sessions, plan), record(sessions, plan)
    assert first != second
    with sessions.begin() as session:
        assert load_plan(session, first) == load_plan(session, second) == plan
        assert {j.job_id for j in list_jobs(session)} == {first, second}


def test_loading_an_unknown_job_names_it(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session, pytest.raises(JobNotFound, match="no job 'abcdef012345'"):
        load_plan(session, "abcdef012345")


def test_segment_and_script_work_load_by_row_id(sessions: sessionmaker[Session]) -> None:
    plan = make_plan()
    job_id = record(sessions, plan)
    with sessions.begin() as session:
        ref = list_segments(session, job_id)[4]
        work = load_segment(session, ref.segment_pk)
        assert (work.job_id, work.script_id, work.state) == (job_id, "script-1", State.PENDING)
        assert work.params == PARAMS
        assert work.segment == plan.scripts[1].segments[1]
        script = load_script(session, work.script_pk)
        assert (script.job_id, script.destination) == (job_id, plan.destination)
        assert script.plan == plan.scripts[1]


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
            lang=draw(st.sampled_from(["eng", "spa"])),
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
            )
            for i, text in enumerate(texts)
        )
        scripts.append(ScriptPlan(script_id, params, output, segments, draw(st.integers(0, 5000))))
    return JobPlan(draw(_text), draw(_text), draw(_text), tuple(scripts))


# Function-scoped fixtures are fine here: every example records a job of its own.
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=plans())
def test_any_plan_round_trips_exactly(sessions: sessionmaker[Session], plan: JobPlan) -> None:
    job_id = record(sessions, plan)
    with sessions.begin() as session:
        assert load_plan(session, job_id) == plan


# The state machine


def test_transition_table() -> None:
    assert can_transition(State.PENDING, State.RUNNING)
    assert can_transition(State.RUNNING, State.PENDING)
    assert can_transition(State.FAILED, State.PENDING)
    assert not can_transition(State.DONE, State.PENDING)
    assert not can_transition(State.CANCELLED, State.PENDING)
    assert not can_transition(State.PENDING, State.DONE)
    assert set(TRANSITIONS) == set(State)
    with pytest.raises(IllegalTransition, match="segment is done; it cannot become running"):
        check_transition("segment", [State.DONE], State.RUNNING)


def test_state_values_are_the_stored_strings(sessions: sessionmaker[Session]) -> None:
    job_id = record(sessions, make_plan(scripts=1, segments=1))
    with sessions.begin() as session:
        raw = session.execute(sa.text("SELECT state FROM jobs")).scalar_one()
    assert raw == "pending" == State.PENDING
    with sessions.begin() as session, pytest.raises(sa.exc.IntegrityError):
        session.execute(sa.text("UPDATE jobs SET state = 'paused' WHERE id = :id"), {"id": job_id})


def test_claim_finish_and_timestamps(sessions: sessionmaker[Session]) -> None:
    job_id = record(sessions, make_plan(scripts=1, segments=2))
    first, second = segment_pks(sessions, job_id)
    before = datetime.now(UTC)

    assert in_tx(sessions, lambda s: claim_segment(s, first)) is True
    assert in_tx(sessions, lambda s: claim_segment(s, first)) is False
    assert state_of(sessions, JobRow, job_id) == State.RUNNING
    assert in_tx(sessions, lambda s: finish_segment(s, first, audio_seconds=1.25)) is not None
    assert in_tx(sessions, lambda s: finish_segment(s, first, audio_seconds=9.0)) is None
    assert in_tx(sessions, lambda s: finish_segment(s, second, audio_seconds=1.0)) is None

    with sessions.begin() as session:
        segment = session.get_one(SegmentRow, first)
        job = session.get_one(JobRow, job_id)
        script = session.get_one(ScriptRow, segment.script_pk)
        assert (segment.state, segment.audio_seconds) == (State.DONE, 1.25)
        assert session.get_one(SegmentRow, second).state == State.PENDING
        for stamp in (segment.started_at, segment.finished_at, job.started_at, script.started_at):
            assert stamp is not None and stamp.tzinfo is not None
            assert stamp.utcoffset() == timedelta(0)
            assert before <= stamp <= datetime.now(UTC)
        assert segment.started_at is not None and segment.finished_at is not None
        assert segment.started_at <= segment.finished_at


def test_starting_a_job_twice_only_wins_once(sessions: sessionmaker[Session]) -> None:
    job_id = record(sessions, make_plan(scripts=1, segments=1))
    assert in_tx(sessions, lambda s: start_job(s, job_id)) is True
    assert in_tx(sessions, lambda s: start_job(s, job_id)) is False


def test_attempts_bill_every_request_that_reached_the_server(
    sessions: sessionmaker[Session],
) -> None:
    job_id = record(sessions, make_plan(scripts=1, segments=2))
    seg, other = segment_pks(sessions, job_id)
    assert in_tx(sessions, lambda s: claim_segment(s, seg))
    in_tx(sessions, lambda s: record_attempt(s, seg, billed_chars=26, error="HTTP 503"))
    in_tx(sessions, lambda s: record_attempt(s, seg, billed_chars=0, error="connect refused"))
    in_tx(sessions, lambda s: record_attempt(s, seg, billed_chars=26))
    in_tx(sessions, lambda s: record_attempt(s, other, billed_chars=26))

    with sessions.begin() as session:
        row = session.get_one(SegmentRow, seg)
        assert (row.attempts, row.billed_chars, row.last_error) == (3, 52, "connect refused")
        summary = job_summary(session, job_id)
        assert summary.scripts[0].billed_chars == 78
        assert summary.scripts[0].attempts == 4
        assert summary.job.billed_chars == 78
        assert summary.job.chars == make_plan(scripts=1, segments=2).chars == 46
    with sessions.begin() as session, pytest.raises(ValueError):
        record_attempt(session, seg, billed_chars=-1)


def test_long_errors_are_clipped(sessions: sessionmaker[Session]) -> None:
    job_id = record(sessions, make_plan(scripts=1, segments=1))
    (seg,) = segment_pks(sessions, job_id)
    in_tx(sessions, lambda s: record_attempt(s, seg, billed_chars=0, error="x" * 10_000))
    with sessions.begin() as session:
        error = session.get_one(SegmentRow, seg).last_error
    assert error is not None and len(error) == 2000 and error.endswith("…")


def test_a_failed_segment_fails_its_script_and_stops_its_claims(
    sessions: sessionmaker[Session],
) -> None:
    job_id = record(sessions, make_plan(scripts=2, segments=2))
    a0, a1, b0, _ = segment_pks(sessions, job_id)
    assert in_tx(sessions, lambda s: fail_segment(s, a0, "nope")) is None  # not claimed
    assert in_tx(sessions, lambda s: claim_segment(s, a0))
    assert in_tx(sessions, lambda s: fail_segment(s, a0, "HTTP 400: bad speaker")) is not None

    with sessions.begin() as session:
        summary = job_summary(session, job_id)
    failed = summary.scripts[0]
    assert (failed.state, failed.segments_failed) == (State.FAILED, 1)
    assert failed.error == "segment 0: HTTP 400: bad speaker"
    assert in_tx(sessions, lambda s: claim_segment(s, a1)) is False
    assert in_tx(sessions, lambda s: claim_segment(s, b0)) is True


def test_a_released_segment_can_be_claimed_again(sessions: sessionmaker[Session]) -> None:
    job_id = record(sessions, make_plan(scripts=1, segments=1))
    (seg,) = segment_pks(sessions, job_id)
    assert in_tx(sessions, lambda s: claim_segment(s, seg))
    assert in_tx(sessions, lambda s: release_segment(s, seg, "HTTP 429"))
    assert in_tx(sessions, lambda s: release_segment(s, seg)) is False
    with sessions.begin() as session:
        row = session.get_one(SegmentRow, seg)
        assert (row.state, row.last_error, row.started_at) == (State.PENDING, "HTTP 429", None)
    assert in_tx(sessions, lambda s: claim_segment(s, seg))


def test_stale_claims_are_requeued(sessions: sessionmaker[Session]) -> None:
    job_id = record(sessions, make_plan(scripts=1, segments=2))
    old, fresh = segment_pks(sessions, job_id)
    for seg in (old, fresh):
        assert in_tx(sessions, lambda s, seg=seg: claim_segment(s, seg))
    with sessions.begin() as session:
        session.get_one(SegmentRow, old).started_at = datetime.now(UTC) - timedelta(hours=1)

    assert in_tx(sessions, lambda s: requeue_stale(s, older_than=timedelta(minutes=10))) == 1
    assert state_of(sessions, SegmentRow, old) == State.PENDING
    assert state_of(sessions, SegmentRow, fresh) == State.RUNNING


# Scripts and jobs roll up


def finish_all(sessions: sessionmaker[Session], ids: list[int]) -> None:
    for seg in ids:
        assert in_tx(sessions, lambda s, seg=seg: claim_segment(s, seg))
        assert in_tx(sessions, lambda s, seg=seg: finish_segment(s, seg, audio_seconds=0.5))


def test_stitch_is_claimed_once_and_only_when_every_segment_is_done(
    sessions: sessionmaker[Session],
) -> None:
    job_id = record(sessions, make_plan(scripts=1, segments=3))
    ids = segment_pks(sessions, job_id)
    (script,) = script_pks(sessions, job_id)
    finish_all(sessions, ids[:2])
    assert in_tx(sessions, lambda s: claim_stitch(s, script)) is False
    assert in_tx(sessions, lambda s: stitchable_scripts(s, job_id)) == []

    finish_all(sessions, ids[2:])
    assert in_tx(sessions, lambda s: stitchable_scripts(s, job_id)) == [script]
    assert in_tx(sessions, lambda s: claim_stitch(s, script)) is True
    assert in_tx(sessions, lambda s: claim_stitch(s, script)) is False
    assert in_tx(sessions, lambda s: release_script(s, script)) is True
    assert in_tx(sessions, lambda s: claim_stitch(s, script)) is True

    outputs = [
        OutputFile("wav", "s3://bucket/prefix/script-0.wav", "ab" * 32, 4410),
        OutputFile("mp3", "s3://bucket/prefix/script-0.mp3", "cd" * 32, 1024),
    ]
    done = in_tx(
        sessions,
        lambda s: finish_script(s, script, audio_seconds=1.5, outputs=outputs),
    )
    assert done == Next(settle=job_id)  # the job's only script: nothing else left to run
    assert in_tx(sessions, lambda s: settle_job(s, job_id)) == State.DONE
    with sessions.begin() as session:
        summary = job_summary(session, job_id)
    row = summary.scripts[0]
    assert (row.state, row.outputs, row.audio_seconds) == (State.DONE, tuple(outputs), 1.5)
    assert row.output_uris == tuple(o.uri for o in outputs)
    assert (summary.job.state, summary.job.scripts_done, summary.job.audio_seconds) == (
        State.DONE,
        1,
        1.5,
    )
    assert summary.job.finished_at is not None


def test_only_the_last_segment_to_finish_makes_its_stitch_due(
    sessions: sessionmaker[Session],
) -> None:
    job_id = record(sessions, make_plan(scripts=2, segments=3))
    a0, a1, a2, b0, _, _ = segment_pks(sessions, job_id)
    script_a, _ = script_pks(sessions, job_id)
    for seg in (a0, a1, a2, b0):
        assert in_tx(sessions, lambda s, seg=seg: claim_segment(s, seg))
    # From the cache (no request), then two synthesized: only requests count as attempts.
    assert in_tx(sessions, lambda s: finish_segment(s, a0, audio_seconds=1.0)) == NOTHING
    assert (
        in_tx(sessions, lambda s: finish_segment(s, a1, audio_seconds=1.0, billed_chars=20))
        == NOTHING
    )
    assert in_tx(sessions, lambda s: finish_segment(s, b0, audio_seconds=1.0)) == NOTHING
    last = in_tx(sessions, lambda s: finish_segment(s, a2, audio_seconds=1.0, billed_chars=21))
    assert last == Next(stitch=script_a)
    with sessions.begin() as session:
        summary = job_summary(session, job_id)
        assert [session.get_one(SegmentRow, seg).attempts for seg in (a0, a1, a2)] == [0, 1, 1]
    assert (summary.scripts[0].attempts, summary.scripts[0].billed_chars) == (2, 41)
    assert in_tx(sessions, lambda s: outstanding(s, job_id)).stitches == (script_a,)


def test_outstanding_work_is_pending_segments_in_plan_order_and_due_stitches(
    sessions: sessionmaker[Session],
) -> None:
    job_id = record(sessions, make_plan(scripts=3, segments=2))
    ids = segment_pks(sessions, job_id)
    scripts = script_pks(sessions, job_id)
    finish_all(sessions, ids[2:4])  # the second script is complete
    assert in_tx(sessions, lambda s: claim_segment(s, ids[4]))  # one running
    todo = in_tx(sessions, lambda s: outstanding(s, job_id))
    assert todo.segments == (ids[0], ids[1], ids[5])
    assert todo.stitches == (scripts[1],)


def test_a_refused_key_abandons_what_waits_and_keeps_it_resumable(
    sessions: sessionmaker[Session],
) -> None:
    job_id = record(sessions, make_plan(scripts=3, segments=2))
    a0, a1, b0, b1, c0, c1 = segment_pks(sessions, job_id)
    _, script_b, script_c = script_pks(sessions, job_id)
    finish_all(sessions, [b0, b1])
    assert in_tx(sessions, lambda s: claim_stitch(s, script_b))  # being stitched
    assert in_tx(sessions, lambda s: claim_segment(s, a0))
    assert in_tx(sessions, lambda s: fail_segment(s, a0, "HTTP 401")) == NOTHING  # b runs
    assert in_tx(sessions, lambda s: abandon_job(s, job_id, "not sent")) == NOTHING
    with sessions.begin() as session:
        summary = job_summary(session, job_id)
        assert session.get_one(SegmentRow, c0).state == State.PENDING
    assert [s.state for s in summary.scripts] == [State.FAILED, State.RUNNING, State.FAILED]
    assert summary.scripts[2].error == "not sent"
    assert in_tx(sessions, lambda s: claim_segment(s, c1)) is False
    # The stitch under way ends the job.
    done = in_tx(sessions, lambda s: finish_script(s, script_b, audio_seconds=1, outputs=[]))
    assert done == Next(settle=job_id)
    assert in_tx(sessions, lambda s: settle_job(s, job_id)) == State.FAILED
    assert in_tx(sessions, lambda s: reset_for_resume(s, job_id)) == 1  # a0; c0, c1 were pending
    assert in_tx(sessions, lambda s: outstanding(s, job_id)).segments == (a0, a1, c0, c1)
    assert script_c in script_pks(sessions, job_id)


def test_job_settles_failed_only_when_nothing_is_left_to_run(
    sessions: sessionmaker[Session],
) -> None:
    job_id = record(sessions, make_plan(scripts=2, segments=1))
    a, b = segment_pks(sessions, job_id)
    script_a, script_b = script_pks(sessions, job_id)
    assert in_tx(sessions, lambda s: claim_segment(s, a))
    assert in_tx(sessions, lambda s: fail_segment(s, a, "HTTP 401"))
    assert in_tx(sessions, lambda s: settle_job(s, job_id)) == State.RUNNING

    finish_all(sessions, [b])
    assert in_tx(sessions, lambda s: claim_stitch(s, script_b))
    assert in_tx(
        sessions,
        lambda s: finish_script(s, script_b, audio_seconds=1, outputs=[]),
    )
    assert in_tx(sessions, lambda s: settle_job(s, job_id)) == State.FAILED
    with sessions.begin() as session:
        job = session.get_one(JobRow, job_id)
        assert job.error == "1 script(s) failed"
        assert session.get_one(ScriptRow, script_a).state == State.FAILED


def test_a_stitch_failure_fails_the_script(sessions: sessionmaker[Session]) -> None:
    job_id = record(sessions, make_plan(scripts=1, segments=1))
    (script,) = script_pks(sessions, job_id)
    finish_all(sessions, segment_pks(sessions, job_id))
    assert in_tx(sessions, lambda s: claim_stitch(s, script))
    assert in_tx(sessions, lambda s: fail_script(s, script, "ffmpeg exited 1"))
    assert in_tx(sessions, lambda s: fail_script(s, script, "again")) is None
    assert in_tx(sessions, lambda s: settle_job(s, job_id)) == State.FAILED


def test_resume_resets_unfinished_work_and_keeps_done_work(
    sessions: sessionmaker[Session],
) -> None:
    job_id = record(sessions, make_plan(scripts=2, segments=2))
    a0, a1, b0, b1 = segment_pks(sessions, job_id)
    script_a, _ = script_pks(sessions, job_id)
    finish_all(sessions, [a0, a1, b0])
    assert in_tx(sessions, lambda s: claim_stitch(s, script_a))  # the stitcher then died
    assert in_tx(sessions, lambda s: claim_segment(s, b1))
    assert in_tx(sessions, lambda s: fail_segment(s, b1, "HTTP 500 five times"))
    assert in_tx(sessions, lambda s: fail_script(s, script_a, "crashed")) is not None
    assert in_tx(sessions, lambda s: settle_job(s, job_id)) == State.FAILED

    assert in_tx(sessions, lambda s: reset_for_resume(s, job_id)) == 1
    with sessions.begin() as session:
        states = {ref.segment_pk: ref.state for ref in list_segments(session, job_id)}
        summary = job_summary(session, job_id)
    assert states == {a0: State.DONE, a1: State.DONE, b0: State.DONE, b1: State.PENDING}
    assert [s.state for s in summary.scripts] == [State.PENDING, State.PENDING]
    assert [s.error for s in summary.scripts] == [None, None]
    assert (summary.job.state, summary.job.error, summary.job.finished_at) == (
        State.PENDING,
        None,
        None,
    )
    # The resumed job picks up where it stopped: one stitch due, one segment to render.
    assert in_tx(sessions, lambda s: stitchable_scripts(s, job_id)) == [script_a]
    assert in_tx(sessions, lambda s: claim_segment(s, b1)) is True


def test_a_finished_or_cancelled_job_cannot_be_resumed(sessions: sessionmaker[Session]) -> None:
    job_id = record(sessions, make_plan(scripts=1, segments=1))
    in_tx(sessions, lambda s: cancel_job(s, job_id))
    with pytest.raises(IllegalTransition, match=f"job {job_id} is cancelled"):
        in_tx(sessions, lambda s: reset_for_resume(s, job_id))
    with pytest.raises(JobNotFound):
        in_tx(sessions, lambda s: reset_for_resume(s, "000000000000"))


def test_cancel_stops_unfinished_work(sessions: sessionmaker[Session]) -> None:
    job_id = record(sessions, make_plan(scripts=1, segments=3))
    done, running, pending = segment_pks(sessions, job_id)
    finish_all(sessions, [done])
    assert in_tx(sessions, lambda s: claim_segment(s, running))

    assert in_tx(sessions, lambda s: cancel_job(s, job_id)) == 2
    assert state_of(sessions, JobRow, job_id) == State.CANCELLED
    assert state_of(sessions, SegmentRow, done) == State.DONE
    assert state_of(sessions, SegmentRow, running) == State.CANCELLED
    # The worker still on it loses its finish, and nothing can be claimed any more.
    assert in_tx(sessions, lambda s: finish_segment(s, running, audio_seconds=1)) is None
    assert in_tx(sessions, lambda s: claim_segment(s, pending)) is False
    with pytest.raises(IllegalTransition, match="is cancelled; it cannot become cancelled"):
        in_tx(sessions, lambda s: cancel_job(s, job_id))


# Reading


def test_list_jobs_newest_first_with_totals(sessions: sessionmaker[Session]) -> None:
    older = record(sessions, make_plan(scripts=1, segments=2, name="older"))
    newer = record(sessions, make_plan(scripts=3, segments=1, name="newer"))
    finish_all(sessions, segment_pks(sessions, older)[:1])
    in_tx(sessions, lambda s: cancel_job(s, newer))
    with sessions.begin() as session:
        rows = list_jobs(session)
        cancelled = list_jobs(session, state=State.CANCELLED)
        limited = list_jobs(session, limit=1)
    assert [(r.job_id, r.name, r.scripts) for r in rows] == [
        (newer, "newer", 3),
        (older, "older", 1),
    ]
    assert rows[1].state == State.RUNNING and rows[0].state == State.CANCELLED
    assert rows[1].chars == make_plan(scripts=1, segments=2).chars
    assert [r.job_id for r in cancelled] == [newer]
    assert [r.job_id for r in limited] == [newer]


def test_job_summary_counts_segments_per_script(sessions: sessionmaker[Session]) -> None:
    job_id = record(sessions, make_plan(scripts=2, segments=3))
    ids = segment_pks(sessions, job_id)
    finish_all(sessions, ids[:2] + ids[3:4])
    with sessions.begin() as session:
        summary = job_summary(session, job_id)
    assert [(s.script_id, s.segments, s.segments_done) for s in summary.scripts] == [
        ("script-0", 3, 2),
        ("script-1", 3, 1),
    ]
    with sessions.begin() as session, pytest.raises(JobNotFound):
        job_summary(session, "ffffffffffff")


def test_job_ids_resolve_from_a_unique_prefix(sessions: sessionmaker[Session]) -> None:
    job_id = record(sessions, make_plan(scripts=1, segments=1))
    with sessions.begin() as session:
        assert resolve_job_id(session, job_id) == job_id
        assert resolve_job_id(session, f" {job_id[:5].upper()} ") == job_id
        with pytest.raises(JobNotFound, match="is not a job id"):
            resolve_job_id(session, "%")
        other_first = "0" if job_id[0] != "0" else "1"
        with pytest.raises(JobNotFound, match="no job"):
            resolve_job_id(session, other_first)
        # Two jobs sharing a prefix: the prefix alone is ambiguous.
        twin = job_id[:6] + ("000000" if job_id[6:] != "000000" else "111111")
        session.add(
            JobRow(id=twin, name="x", manifest="m", destination="d", created_at=datetime.now(UTC))
        )
        session.flush()
        with pytest.raises(JobNotFound, match="several"):
            resolve_job_id(session, job_id[:6])


def test_no_column_could_hold_an_api_key() -> None:
    columns = {c.name for table in Base.metadata.tables.values() for c in table.columns}
    assert not {name for name in columns if "key" in name and name != "cache_key"}
    assert not {name for name in columns if "token" in name or "secret" in name}


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


# Races between real threads on separate connections


def test_concurrent_claims_of_a_segment_have_exactly_one_winner(engine: sa.Engine) -> None:
    sessions = session_factory(engine)
    job_id = record(sessions, make_plan(scripts=1, segments=12))
    for seg in segment_pks(sessions, job_id):
        results = race(engine, [one_tx(lambda s, seg=seg: claim_segment(s, seg))] * 8)
        assert sorted(results) == [False] * 7 + [True]
        assert state_of(sessions, SegmentRow, seg) == State.RUNNING


def test_the_last_segments_finishing_together_give_exactly_one_stitcher(
    engine: sa.Engine,
) -> None:
    sessions = session_factory(engine)
    job_id = record(sessions, make_plan(scripts=8, segments=4))
    refs = in_tx(sessions, lambda s: list_segments(s, job_id))
    for ref in refs:
        assert in_tx(sessions, lambda s, ref=ref: claim_segment(s, ref.segment_pk))

    def finisher(segment_pk: int) -> Worker[Next | None]:
        return one_tx(lambda s: finish_segment(s, segment_pk, audio_seconds=1.0))

    for script_pk in script_pks(sessions, job_id):
        mine = [r for r in refs if r.script_pk == script_pk]
        results = race(engine, [finisher(r.segment_pk) for r in mine])
        assert results.count(Next(stitch=script_pk)) == 1 and results.count(NOTHING) == 3
        # Told once, and the stitch is then claimed once.
        assert in_tx(sessions, lambda s, pk=script_pk: claim_stitch(s, pk)) is True
        assert state_of(sessions, ScriptRow, script_pk) == State.RUNNING


def test_concurrent_stitch_claims_have_exactly_one_winner(engine: sa.Engine) -> None:
    sessions = session_factory(engine)
    job_id = record(sessions, make_plan(scripts=4, segments=2))
    finish_all(sessions, segment_pks(sessions, job_id))
    for script_pk in script_pks(sessions, job_id):
        results = race(engine, [one_tx(lambda s, pk=script_pk: claim_stitch(s, pk))] * 6)
        assert results.count(True) == 1


def test_the_last_scripts_finishing_together_settle_the_job(engine: sa.Engine) -> None:
    sessions = session_factory(engine)
    job_id = record(sessions, make_plan(scripts=4, segments=1))
    finish_all(sessions, segment_pks(sessions, job_id))
    pks = script_pks(sessions, job_id)
    for pk in pks:
        assert in_tx(sessions, lambda s, pk=pk: claim_stitch(s, pk))

    def stitched(pk: int) -> Worker[Next | None]:
        return one_tx(
            lambda s: finish_script(
                s, pk, audio_seconds=2.0, outputs=[OutputFile("wav", f"out/{pk}.wav", "f" * 64, 44)]
            )
        )

    results = race(engine, [stitched(pk) for pk in pks])
    assert results.count(Next(settle=job_id)) == 1 and results.count(NOTHING) == 3
    assert in_tx(sessions, lambda s: settle_job(s, job_id)) == State.DONE
    assert state_of(sessions, JobRow, job_id) == State.DONE
    # A stitch reported twice (a redelivered task) changes nothing.
    assert (
        in_tx(sessions, lambda s: finish_script(s, pks[0], audio_seconds=9.0, outputs=[])) is None
    )


def test_scripts_failing_together_settle_the_job_once(engine: sa.Engine) -> None:
    sessions = session_factory(engine)
    job_id = record(sessions, make_plan(scripts=4, segments=2))
    firsts = [ids[0] for ids in _by_script(sessions, job_id)]
    for seg in firsts:
        assert in_tx(sessions, lambda s, seg=seg: claim_segment(s, seg))
    results = race(
        engine, [one_tx(lambda s, seg=seg: fail_segment(s, seg, "HTTP 400")) for seg in firsts]
    )
    assert results.count(Next(settle=job_id)) == 1 and results.count(NOTHING) == 3
    assert in_tx(sessions, lambda s: settle_job(s, job_id)) == State.FAILED


def _by_script(sessions: sessionmaker[Session], job_id: str) -> list[list[int]]:
    refs = in_tx(sessions, lambda s: list_segments(s, job_id))
    grouped: dict[int, list[int]] = {}
    for ref in refs:
        grouped.setdefault(ref.script_pk, []).append(ref.segment_pk)
    return list(grouped.values())
