"""What a task does around its stage (`workers.flow`), called directly on a worker's Runtime.

No Celery worker runs: the flow functions are called as the tasks call them, on a
`workers.runtime.Runtime` built from a worker's settings (the test's Redis as broker and
limiter store, the test's database as job table, the local engine). Other workers are other
executors in the same job table: a live one beats its row, a dead one's row is old or gone.
What the flow sends stays in the broker's queues, where the test reads it; what it
synthesizes shows in the engine's request count.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from pipeline.manifest import load_manifest
from pipeline.plan import build_plan
from pipeline.settings import Settings
from pipeline.stages import Outcome, StageResult
from pipeline.storage.keys import RESULTS_KEY, release_key
from pipeline.store import State, executors, record_plan, transitions
from pipeline.store.schema import EXECUTORS, SEGMENTS, utcnow
from pipeline.store.transitions import Claim, Next
from rime_local.server import RunningEngine
from tests.fixtures.jobs import (
    ME,
    TEST_EXECUTOR_TIMEOUT,
    executor_for,
    job_row,
    row_of,
    script_row,
    segment_row,
    set_back,
)
from tests.fixtures.s3 import S3Env
from tests.fixtures.services import PrivateRedis, poll_until
from tests.fixtures.worker_runtime import (
    Broker,
    Runtimes,
    assert_no_thread_left,
    finish,
    record_job,
    segments_by_script,
    stitch,
    synthesize,
    threads_of_ours,
    worker_variables,
)
from workers import flow
from workers.app import create_app
from workers.dispatch import SYNTH_QUEUE
from workers.runtime import Runtime

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def requests(engine: RunningEngine) -> int:
    """Synthesis requests the engine has received (in this session)."""
    return int(engine.metrics()["requests"])


def job_state(db: Engine, job_id: str) -> State:
    return job_row(db, job_id).state


def output_of(db: Engine, script_pk: int) -> Path:
    """The stitched file of a done script; it exists."""
    row = script_row(db, script_pk)
    assert row.state is State.DONE, (row.state, row.error)
    [output] = row.outputs
    path = Path(output["uri"])
    assert path.is_file() and path.stat().st_size == output["bytes"]
    return path


def destination(tmp_path: Path) -> Path:
    """Where `record_job(db, tmp_path / "job", ...)` puts its outputs."""
    return tmp_path / "job" / "out"


def synthesize_all(rt: Runtime, segment_pks: list[int]) -> None:
    for segment_pk in segment_pks:
        result = flow.synthesize(rt, segment_pk)
        assert result.outcome is Outcome.SYNTHESIZED, result


def test_the_last_segment_of_a_script_is_stitched_at_once_and_the_last_script_sends_the_finish(
    runtimes: Runtimes, broker: Broker, engine: RunningEngine, tmp_path: Path
) -> None:
    rt = runtimes()
    assert rt.stitches_here
    job_id = record_job(rt.db, tmp_path / "job", scripts=2, lines=2)
    first, second = segments_by_script(rt.db, job_id)
    before = requests(engine)

    opening = flow.synthesize(rt, first[0].segment_pk)
    assert opening.outcome is Outcome.SYNTHESIZED
    assert opening.next == Next()
    assert script_row(rt.db, first[0].script_pk).state is State.PENDING

    closing = flow.synthesize(rt, first[1].segment_pk)
    # The stage said a stitch was due, and this worker did it there and then.
    assert closing.outcome is Outcome.SYNTHESIZED
    assert closing.next == Next(stitch=first[0].script_pk)
    output_of(rt.db, first[0].script_pk)
    # Nothing sent: no stitch task, and no finish while the second script is still to run.
    assert broker.everything() == {"rime-batch": [], "rime-batch.stitch": []}

    synthesize_all(rt, [ref.segment_pk for ref in second])

    output_of(rt.db, second[0].script_pk)
    assert broker.stitches() == [finish(job_id)]
    assert broker.synth() == []
    assert requests(engine) - before == 4
    # The finish task settles the job; until it runs the job is still running.
    assert job_state(rt.db, job_id) is State.RUNNING
    assert not (destination(tmp_path) / RESULTS_KEY).exists()


def test_a_task_of_several_segments_runs_them_side_by_side_and_stitches_every_script_it_completes(
    runtimes: Runtimes, broker: Broker, engine: RunningEngine, tmp_path: Path
) -> None:
    rt = runtimes()
    job_id = record_job(rt.db, tmp_path / "job", scripts=3, lines=2)
    scripts = segments_by_script(rt.db, job_id)
    pks = [ref.segment_pk for refs in scripts for ref in refs]
    rt.run(rt.limiter.reset_peak())
    before = requests(engine)

    results = flow.synthesize_all(rt, pks)

    assert [r.outcome for r in results] == [Outcome.SYNTHESIZED] * 6
    # One result per segment, in the order asked: of each script's two, the one that finished
    # last made its stitch due.
    pairs = [results[i : i + 2] for i in range(0, len(results), 2)]
    for refs, pair in zip(scripts, pairs, strict=True):
        assert {r.next for r in pair} == {Next(), Next(stitch=refs[0].script_pk)}
    assert requests(engine) - before == 6
    # Side by side, within the shared cap.
    assert 2 <= rt.run(rt.limiter.peak()) <= rt.settings.limits.concurrency
    for refs in scripts:
        output_of(rt.db, refs[0].script_pk)
    assert broker.stitches() == [finish(job_id)]
    assert broker.synth() == []


def test_a_task_skips_the_segments_it_names_that_are_done_or_have_no_row(
    runtimes: Runtimes, broker: Broker, engine: RunningEngine, tmp_path: Path
) -> None:
    rt = runtimes()
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=3)
    [refs] = segments_by_script(rt.db, job_id)
    first, *rest = (ref.segment_pk for ref in refs)
    assert flow.synthesize(rt, first).outcome is Outcome.SYNTHESIZED
    before = requests(engine)
    missing = max(rest) + 1000

    results = flow.synthesize_all(rt, [first, missing, *rest])

    assert [r.outcome for r in results] == [
        Outcome.SKIPPED,
        Outcome.SKIPPED,
        Outcome.SYNTHESIZED,
        Outcome.SYNTHESIZED,
    ]
    assert requests(engine) - before == 2
    output_of(rt.db, refs[0].script_pk)
    assert broker.stitches() == [finish(job_id)]


def test_a_stopping_worker_starts_no_segment_and_sends_its_tasks_segments_back_to_the_queue(
    runtimes: Runtimes, broker: Broker, engine: RunningEngine, tmp_path: Path
) -> None:
    rt = runtimes(RIME_BATCH_SEGMENTS_PER_TASK="8")
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=3)
    [refs] = segments_by_script(rt.db, job_id)
    pks = [ref.segment_pk for ref in refs]
    before = requests(engine)

    rt.stopping.set()  # a warm shutdown began
    results = flow.synthesize_all(rt, pks)

    assert [r.outcome for r in results] == [Outcome.RETURNED] * 3
    assert requests(engine) == before
    assert all(segment_row(rt.db, pk).state is State.PENDING for pk in pks)
    assert all(segment_row(rt.db, pk).claim is None for pk in pks)
    assert broker.synth() == [synthesize(*pks)]
    assert broker.stitches() == []


def test_a_worker_that_does_not_serve_the_stitch_queue_sends_a_stitch_task(
    runtimes: Runtimes, broker: Broker, engine: RunningEngine, tmp_path: Path
) -> None:
    rt = runtimes(queues=[SYNTH_QUEUE])
    assert not rt.stitches_here
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=2)
    [refs] = segments_by_script(rt.db, job_id)
    script_pk = refs[0].script_pk
    before = requests(engine)

    synthesize_all(rt, [ref.segment_pk for ref in refs])

    assert broker.stitches() == [stitch(script_pk)]
    assert broker.synth() == []
    row = script_row(rt.db, script_pk)
    assert row.state is State.PENDING and row.outputs == []
    assert requests(engine) - before == 2

    # The stitch task, wherever it runs, does the rest and sends the job's rollup.
    done = flow.stitch(rt, script_pk)

    assert done.outcome is Outcome.STITCHED
    assert done.next == Next(settle=job_id)
    output_of(rt.db, script_pk)
    assert broker.stitches() == [stitch(script_pk), finish(job_id)]


def test_a_worker_whose_stitchers_are_all_busy_sends_a_stitch_task(
    runtimes: Runtimes, broker: Broker, tmp_path: Path
) -> None:
    rt = runtimes(RIME_BATCH_STITCH_PARALLELISM="1")
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=2)
    [refs] = segments_by_script(rt.db, job_id)
    script_pk = refs[0].script_pk

    # Its one stitcher is on another script.
    assert rt.stitching.acquire(blocking=False)
    try:
        synthesize_all(rt, [ref.segment_pk for ref in refs])
    finally:
        rt.stitching.release()

    assert broker.stitches() == [stitch(script_pk)]
    assert script_row(rt.db, script_pk).state is State.PENDING


def test_a_redelivered_task_for_finished_work_sends_and_synthesizes_nothing(
    runtimes: Runtimes, broker: Broker, engine: RunningEngine, tmp_path: Path
) -> None:
    rt = runtimes()
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=2)
    [refs] = segments_by_script(rt.db, job_id)
    script_pk = refs[0].script_pk
    synthesize_all(rt, [ref.segment_pk for ref in refs])
    output = output_of(rt.db, script_pk)
    stitched = output.stat().st_mtime_ns
    assert broker.stitches() == [finish(job_id)]
    broker.clear()
    before = requests(engine)
    attempts = [segment_row(rt.db, ref.segment_pk).attempts for ref in refs]

    for ref in refs:
        again = flow.synthesize(rt, ref.segment_pk)
        assert again.outcome is Outcome.SKIPPED
        assert again.next == Next()
    restitched = flow.stitch(rt, script_pk)

    assert restitched.outcome is Outcome.SKIPPED
    assert requests(engine) == before
    assert broker.everything() == {"rime-batch": [], "rime-batch.stitch": []}
    assert [segment_row(rt.db, ref.segment_pk).attempts for ref in refs] == attempts
    assert all(segment_row(rt.db, ref.segment_pk).state is State.DONE for ref in refs)
    assert output.stat().st_mtime_ns == stitched


def died_an_hour_ago(db: Engine) -> Claim:
    """A claim of a worker that was SIGKILLed an hour ago: its executor row is still there, its
    heartbeat an hour old."""
    with db.begin() as conn:
        executors.register(conn, "killed-worker", executors.WORKER)
        conn.execute(
            update(EXECUTORS)
            .where(EXECUTORS.c.id == "killed-worker")
            .values(heartbeat_at=utcnow() - timedelta(hours=1))
        )
    return Claim("killed-worker.1", "killed-worker")


def test_a_segment_a_live_executor_holds_is_skipped_and_its_claim_left_alone(
    runtimes: Runtimes, broker: Broker, engine: RunningEngine, tmp_path: Path
) -> None:
    rt = runtimes()
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=2)
    [refs] = segments_by_script(rt.db, job_id)
    busy = refs[0].segment_pk
    # Another worker, alive (its heartbeat beats its row), claimed the row an hour ago: a long
    # synthesis is not a dead one.
    with executor_for(rt.db, executors.WORKER) as other:
        theirs = other.claim()
        with rt.db.begin() as conn:
            assert transitions.claim_segment(conn, busy, theirs)
            set_back(conn, SEGMENTS, busy, 3600, "started_at")
        claimed_at = segment_row(rt.db, busy).started_at
        before = requests(engine)

        first = flow.synthesize(rt, busy)
        # A redelivered message is the same task again: skipped the same way, at once.
        again = flow.synthesize(rt, busy)

        assert first.outcome is Outcome.SKIPPED and again.outcome is Outcome.SKIPPED
        assert first.next == again.next == Next()
        row = segment_row(rt.db, busy)
        assert row.state is State.RUNNING and row.started_at == claimed_at
        assert (row.claim, row.executor) == (theirs.token, other.id)
        assert row.last_error is None and row.attempts == 0 and row.billed_chars == 0
        assert requests(engine) == before
        assert broker.everything() == {"rime-batch": [], "rime-batch.stitch": []}


def test_a_stitch_a_live_executor_holds_is_skipped_and_its_claim_left_alone(
    runtimes: Runtimes, broker: Broker, tmp_path: Path
) -> None:
    rt = runtimes(queues=[SYNTH_QUEUE])
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=1)
    [[ref]] = segments_by_script(rt.db, job_id)
    synthesize_all(rt, [ref.segment_pk])
    broker.clear()
    with executor_for(rt.db, executors.WORKER) as other:
        theirs = other.claim()
        with rt.db.begin() as conn:
            assert transitions.claim_stitch(conn, ref.script_pk, theirs)

        skipped = flow.stitch(rt, ref.script_pk)

        assert skipped.outcome is Outcome.SKIPPED
        row = script_row(rt.db, ref.script_pk)
        assert row.state is State.RUNNING and row.outputs == []
        assert (row.claim, row.executor) == (theirs.token, other.id)
        assert broker.everything() == {"rime-batch": [], "rime-batch.stitch": []}


def test_a_segment_left_running_by_a_dead_executor_is_taken_over_and_finished(
    runtimes: Runtimes, broker: Broker, engine: RunningEngine, tmp_path: Path
) -> None:
    rt = runtimes()
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=2)
    [refs] = segments_by_script(rt.db, job_id)
    rowless, stopped = (ref.segment_pk for ref in refs)
    # One executor's row is gone (it was removed as dead); the other's is left, no longer
    # beating. Both were claimed just now: only the executor's heartbeat counts, not the age.
    killed = died_an_hour_ago(rt.db)
    with rt.db.begin() as conn:
        assert transitions.claim_segment(conn, rowless, ME)
        assert transitions.claim_segment(conn, stopped, killed)
    before = requests(engine)

    first = flow.synthesize(rt, rowless)
    second = flow.synthesize(rt, stopped)

    assert first.outcome is Outcome.SYNTHESIZED
    assert second.outcome is Outcome.SYNTHESIZED
    for segment_pk in (rowless, stopped):
        row = segment_row(rt.db, segment_pk)
        assert row.state is State.DONE
        assert row.executor == rt.executor.id
        assert row.last_error == transitions.TAKEN_OVER
        assert row.attempts == 1
        assert row.billed_chars == row.chars
    assert requests(engine) - before == 2
    # Taken over, it went on as usual: the script was stitched and the finish sent.
    output_of(rt.db, refs[0].script_pk)
    assert broker.stitches() == [finish(job_id)]


def test_a_stitch_left_running_by_a_dead_executor_is_taken_over_and_finished(
    runtimes: Runtimes, broker: Broker, tmp_path: Path
) -> None:
    rt = runtimes(queues=[SYNTH_QUEUE])
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=1)
    [[ref]] = segments_by_script(rt.db, job_id)
    synthesize_all(rt, [ref.segment_pk])
    broker.clear()
    killed = died_an_hour_ago(rt.db)
    with rt.db.begin() as conn:
        assert transitions.claim_stitch(conn, ref.script_pk, killed)

    done = flow.stitch(rt, ref.script_pk)

    assert done.outcome is Outcome.STITCHED
    output_of(rt.db, ref.script_pk)
    assert script_row(rt.db, ref.script_pk).executor == rt.executor.id
    assert broker.stitches() == [finish(job_id)]


def test_finish_writes_results_json_only_when_the_job_is_over(
    runtimes: Runtimes, broker: Broker, tmp_path: Path
) -> None:
    rt = runtimes()
    job_id = record_job(rt.db, tmp_path / "job", scripts=2, lines=1)
    first, second = segments_by_script(rt.db, job_id)
    results = destination(tmp_path) / RESULTS_KEY

    assert flow.finish(rt, job_id) is State.RUNNING
    synthesize_all(rt, [first[0].segment_pk])
    assert flow.finish(rt, job_id) is State.RUNNING
    assert not results.exists()
    assert broker.stitches() == []

    synthesize_all(rt, [second[0].segment_pk])
    assert broker.stitches() == [finish(job_id)]
    assert flow.finish(rt, job_id) is State.DONE

    document = json.loads(results.read_text())
    assert document["job_id"] == job_id and document["state"] == "done"
    assert [s["state"] for s in document["scripts"]] == ["done", "done"]
    outputs = [output_of(rt.db, ref.script_pk) for ref in (first[0], second[0])]
    assert [s["outputs"][0]["uri"] for s in document["scripts"]] == [str(p) for p in outputs]
    # A redelivered finish changes nothing.
    assert flow.finish(rt, job_id) is State.DONE
    assert job_state(rt.db, job_id) is State.DONE


def test_finish_writes_results_json_for_a_failed_job(runtimes: Runtimes, tmp_path: Path) -> None:
    rt = runtimes()
    job_id = record_job(rt.db, tmp_path / "job", scripts=2, lines=1)
    first, second = segments_by_script(rt.db, job_id)
    synthesize_all(rt, [first[0].segment_pk])
    # Another worker synthesized the second script and failed to stitch it.
    with rt.db.begin() as conn:
        assert transitions.claim_segment(conn, second[0].segment_pk, ME)
        assert transitions.finish_segment(conn, second[0].segment_pk, ME, audio_seconds=1.0)
        assert transitions.claim_stitch(conn, second[0].script_pk, ME)
        assert transitions.fail_script(conn, second[0].script_pk, ME, "stitching failed: disk")

    assert flow.finish(rt, job_id) is State.FAILED

    # In the job's release folder; a failed job publishes nothing.
    released = destination(tmp_path) / release_key(job_id, RESULTS_KEY)
    document = json.loads(released.read_text())
    assert not (destination(tmp_path) / RESULTS_KEY).exists()
    assert document["state"] == "failed"
    assert [s["state"] for s in document["scripts"]] == ["done", "failed"]
    assert document["scripts"][1]["error"] == "stitching failed: disk"


def test_close_stops_every_thread_the_runtime_started_and_removes_its_executor(
    runtimes: Runtimes, broker: Broker, tmp_path: Path
) -> None:
    before = threads_of_ours()
    settings = runtimes.settings()
    app = create_app(settings)
    rt = Runtime(settings, app)
    try:
        rt.start_sweeper()
        job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=1)
        [[ref]] = segments_by_script(rt.db, job_id)
        synthesize_all(rt, [ref.segment_pk])
        started = {t.name for t in threads_of_ours() - before}
        assert {"rime-batch-loop", "rime-batch-heartbeat", "rime-batch-sweeper"} <= started
        assert row_of(rt.db, EXECUTORS, rt.executor.id).kind == executors.WORKER
        # The heartbeat beats while the runtime lives.
        first = row_of(rt.db, EXECUTORS, rt.executor.id).heartbeat_at
        poll_until(
            lambda: row_of(rt.db, EXECUTORS, rt.executor.id).heartbeat_at > first,
            10,
            "a heartbeat",
        )
    finally:
        rt.close()
        app.close()

    assert_no_thread_left(before)
    # The loop is stopped: nothing more runs on it.
    assert not rt.loop.is_running()
    # Its row is gone: whatever it still claimed is dead to everyone at once.
    with rt.db.begin() as conn:
        assert conn.scalar(select(EXECUTORS.c.id).where(EXECUTORS.c.id == rt.executor.id)) is None
    assert broker.stitches() == [finish(job_id)]


def test_close_leaves_no_thread_after_writing_to_a_remote_store(
    redis_url: str, sqlite_url: str, engine: RunningEngine, s3: S3Env, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "\n".join(
            [
                "job: remote",
                f"output: {s3.uri(bucket, 'out')}",
                "defaults: {speaker: cove, modelId: mistv2, samplingRate: 16000, formats: [wav]}",
                "scripts:",
                "  - {id: only, text: 'The quiet river waits for us.'}",
            ]
        )
        + "\n"
    )
    before = threads_of_ours()
    settings = Settings.from_environment(worker_variables(redis_url, sqlite_url, engine.http_url))
    app = create_app(settings)
    rt = Runtime(settings, app)
    try:
        with rt.db.begin() as conn:
            job_id = record_plan(conn, build_plan(load_manifest(manifest)))
        [[ref]] = segments_by_script(rt.db, job_id)
        synthesize_all(rt, [ref.segment_pk])
        assert flow.finish(rt, job_id) is State.DONE
    finally:
        rt.close()
        app.close()

    listed = s3.client.list_objects_v2(Bucket=bucket, Prefix="out/")
    keys = {item["Key"] for item in listed.get("Contents", [])}
    assert {"out/only.wav", f"out/{RESULTS_KEY}"} <= keys
    assert_no_thread_left(before)


def test_a_redis_outage_makes_no_second_holder_of_a_segment_in_flight(
    stoppable_redis: PrivateRedis,
    database_url: str,
    engine_factory: Callable[..., RunningEngine],
    tmp_path: Path,
) -> None:
    # A segment that takes seconds before its first byte, on workers whose broker and limiter
    # are a Redis of the test's own. The outage below outlasts the shared cap's slots and the
    # executor timeout both: only the job table can say the first worker is alive.
    slow = engine_factory(ttfb_ms=6000)
    server = stoppable_redis.start()
    made = Runtimes(server.url, database_url, slow)
    try:
        first, second = made(), made()
        job_id = record_job(first.db, tmp_path / "job", scripts=1, lines=1)
        [[ref]] = segments_by_script(first.db, job_id)
        results: dict[str, StageResult] = {}

        def synthesize_on(name: str, rt: Runtime) -> threading.Thread:
            def run() -> None:
                results[name] = flow.synthesize(rt, ref.segment_pk)

            thread = threading.Thread(target=run, name=f"task-{name}")
            thread.start()
            return thread

        holder = synthesize_on("first", first)
        poll_until(
            lambda: segment_row(first.db, ref.segment_pk).executor == first.executor.id,
            10,
            "the first worker's claim",
        )
        server.pause()
        paused_at, beaten_since = time.monotonic(), utcnow()
        try:
            # The second worker gets the same segment's task (a redelivery, a sweep's resend).
            duplicate = synthesize_on("second", second)
            poll_until(
                lambda: (
                    time.monotonic() - paused_at > 2 * TEST_EXECUTOR_TIMEOUT
                    and row_of(first.db, EXECUTORS, first.executor.id).heartbeat_at > beaten_since
                ),
                20,
                "an outage longer than the executor timeout, the first worker beating through it",
            )
            row = segment_row(first.db, ref.segment_pk)
            assert (row.state, row.executor) == (State.RUNNING, first.executor.id)
        finally:
            server.resume()
        holder.join(timeout=60)
        duplicate.join(timeout=60)
        assert not holder.is_alive() and not duplicate.is_alive()

        assert results["first"].outcome is Outcome.SYNTHESIZED
        assert results["second"].outcome is Outcome.SKIPPED
        row = segment_row(first.db, ref.segment_pk)
        assert (row.state, row.executor) == (State.DONE, first.executor.id)
        assert (row.attempts, row.billed_chars, row.last_error) == (1, row.chars, None)
        metrics = slow.metrics()
        assert (metrics["requests"], metrics["completed"]) == (1, 1)
        assert metrics["characters"] == row.chars
        output_of(first.db, ref.script_pk)
    finally:
        server.resume()
        made.close_all()
