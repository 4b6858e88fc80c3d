"""What a task does around its stage (`workers.flow`), called directly on a worker's Runtime.

No Celery worker runs: the flow functions are called as the tasks call them, on a
`workers.runtime.Runtime` built from a worker's settings (the test's Redis as broker and
lease store, the test's database, the local engine). What they send stays in the broker's
queues, where the test reads it; what they synthesize shows in the engine's request count.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine
from workers.leases import Leases

from pipeline.manifest import load_manifest
from pipeline.plan import build_plan
from pipeline.results import RESULTS_KEY
from pipeline.settings import Settings
from pipeline.stages import Outcome
from pipeline.store import State, record_plan, transitions
from pipeline.store.transitions import Next
from rime_local.server import RunningEngine
from tests.fixtures.jobs import ME, job_row, script_row, segment_row
from tests.fixtures.s3 import S3Env
from tests.fixtures.worker_runtime import (
    Broker,
    Runtimes,
    assert_no_thread_left,
    finish,
    record_job,
    segments_by_script,
    stitch,
    threads_of_ours,
    worker_variables,
)
from workers import flow
from workers.app import create_app
from workers.dispatch import SYNTH_QUEUE
from workers.runtime import Runtime

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

LEASE = 0.6  # RIME_BATCH_LEASE_SECONDS of the test's workers (tests/fixtures/worker_runtime.py)


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
        again = flow.synthesize(rt, ref.segment_pk, redelivered=True)
        assert again.outcome is Outcome.SKIPPED
        assert again.next == Next()
    restitched = flow.stitch(rt, script_pk, redelivered=True)

    assert restitched.outcome is Outcome.SKIPPED
    assert requests(engine) == before
    assert broker.everything() == {"rime-batch": [], "rime-batch.stitch": []}
    assert [segment_row(rt.db, ref.segment_pk).attempts for ref in refs] == attempts
    assert all(segment_row(rt.db, ref.segment_pk).state is State.DONE for ref in refs)
    assert output.stat().st_mtime_ns == stitched


def test_a_segment_a_live_worker_holds_is_skipped_and_its_claim_left_alone(
    runtimes: Runtimes, broker: Broker, engine: RunningEngine, redis_url: str, tmp_path: Path
) -> None:
    rt = runtimes()
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=2)
    [refs] = segments_by_script(rt.db, job_id)
    busy = refs[0].segment_pk
    # Another worker, alive (its keeper renews the lease), has taken the lease and the row.
    other = Leases(redis.Redis.from_url(redis_url), LEASE)
    try:
        token = other.acquire(f"segment:{busy}")
        assert token is not None
        with rt.db.begin() as conn:
            assert transitions.claim_segment(conn, busy, ME)
        claimed_at = segment_row(rt.db, busy).started_at
        before = requests(engine)

        fresh = flow.synthesize(rt, busy)
        started = time.monotonic()
        # A redelivered message waits for a dead holder's lease to run out: this one does not.
        redelivered = flow.synthesize(rt, busy, redelivered=True)
        waited = time.monotonic() - started

        assert fresh.outcome is Outcome.SKIPPED
        assert redelivered.outcome is Outcome.SKIPPED
        assert 1.5 * LEASE <= waited < 1.5 * LEASE + 1.0
        row = segment_row(rt.db, busy)
        assert row.state is State.RUNNING and row.started_at == claimed_at
        assert row.last_error is None
        assert requests(engine) == before
        assert broker.everything() == {"rime-batch": [], "rime-batch.stitch": []}
        assert other.holder(f"segment:{busy}") == token
    finally:
        other.close()
        other.redis.close()


def test_a_stitch_a_live_worker_holds_is_skipped(
    runtimes: Runtimes, broker: Broker, redis_url: str, tmp_path: Path
) -> None:
    rt = runtimes(queues=[SYNTH_QUEUE])
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=1)
    [[ref]] = segments_by_script(rt.db, job_id)
    synthesize_all(rt, [ref.segment_pk])
    broker.clear()
    other = Leases(redis.Redis.from_url(redis_url), LEASE)
    try:
        token = other.acquire(f"script:{ref.script_pk}")
        assert token is not None

        skipped = flow.stitch(rt, ref.script_pk)

        assert skipped.outcome is Outcome.SKIPPED
        row = script_row(rt.db, ref.script_pk)
        assert row.state is State.PENDING and row.outputs == []
        assert broker.everything() == {"rime-batch": [], "rime-batch.stitch": []}
        assert other.holder(f"script:{ref.script_pk}") == token
    finally:
        other.close()
        other.redis.close()


def test_a_segment_left_running_by_a_dead_worker_is_taken_over_and_finished(
    runtimes: Runtimes, broker: Broker, engine: RunningEngine, redis_url: str, tmp_path: Path
) -> None:
    rt = runtimes()
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=2)
    [refs] = segments_by_script(rt.db, job_id)
    orphan, stale_lease = (ref.segment_pk for ref in refs)
    # One worker died long enough ago that its lease is gone; another only just (its lease
    # is still in Redis, no longer renewed).
    dead = Leases(redis.Redis.from_url(redis_url), LEASE)
    try:
        assert dead.acquire(f"segment:{stale_lease}") is not None
    finally:
        dead.close()
        dead.redis.close()
    with rt.db.begin() as conn:
        assert transitions.claim_segment(conn, orphan, ME)
        assert transitions.claim_segment(conn, stale_lease, ME)
    before = requests(engine)

    first = flow.synthesize(rt, orphan, redelivered=True)
    assert broker.client.pttl(f"rime-batch:lease:segment:{stale_lease}") > 0
    started = time.monotonic()
    second = flow.synthesize(rt, stale_lease, redelivered=True)
    waited = time.monotonic() - started

    assert first.outcome is Outcome.SYNTHESIZED
    assert second.outcome is Outcome.SYNTHESIZED
    # It waited for the dead worker's lease to run out, no longer than its redelivery wait.
    assert waited < 1.5 * LEASE + 0.5
    for segment_pk in (orphan, stale_lease):
        row = segment_row(rt.db, segment_pk)
        assert row.state is State.DONE
        assert row.last_error == flow.TAKEN_OVER
        assert row.attempts == 1
    assert requests(engine) - before == 2
    # Taken over, it went on as usual: the script was stitched and the finish sent.
    output_of(rt.db, refs[0].script_pk)
    assert broker.stitches() == [finish(job_id)]


def test_a_stitch_left_running_by_a_dead_worker_is_taken_over_and_finished(
    runtimes: Runtimes, broker: Broker, tmp_path: Path
) -> None:
    rt = runtimes(queues=[SYNTH_QUEUE])
    job_id = record_job(rt.db, tmp_path / "job", scripts=1, lines=1)
    [[ref]] = segments_by_script(rt.db, job_id)
    synthesize_all(rt, [ref.segment_pk])
    broker.clear()
    with rt.db.begin() as conn:
        assert transitions.claim_stitch(conn, ref.script_pk, ME)  # and then it died

    done = flow.stitch(rt, ref.script_pk, redelivered=True)

    assert done.outcome is Outcome.STITCHED
    output_of(rt.db, ref.script_pk)
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
    with rt.db.begin() as conn:
        assert transitions.fail_script(conn, second[0].script_pk, ME, "stitching failed: disk")

    assert flow.finish(rt, job_id) is State.FAILED

    document = json.loads((destination(tmp_path) / RESULTS_KEY).read_text())
    assert document["state"] == "failed"
    assert [s["state"] for s in document["scripts"]] == ["done", "failed"]
    assert document["scripts"][1]["error"] == "stitching failed: disk"


def test_close_stops_every_thread_the_runtime_started(
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
        token = rt.leases.acquire("segment:0")
        assert token is not None
        synthesize_all(rt, [ref.segment_pk])
        started = {t.name for t in threads_of_ours() - before}
        assert {"rime-batch-loop", "lease-keeper", "rime-batch-sweeper"} <= started
    finally:
        rt.close()
        app.close()

    assert_no_thread_left(before)
    # The loop is stopped: nothing more runs on it.
    assert not rt.loop.is_running()
    # A lease still held at close is no longer renewed, and runs out.
    time.sleep(LEASE + 0.2)
    assert broker.client.exists(rt.leases.key("segment:0")) == 0


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
