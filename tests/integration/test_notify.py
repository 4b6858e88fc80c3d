"""Webhooks of a job's end: recorded by the change that ends the job, delivered over a real HTTP
receiver on loopback, retried, given up, and never holding the secret anywhere.

The job table is real (SQLite and PostgreSQL); jobs run through the real stages with our own
synthesizer, as in test_stages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, func, select

from pipeline.deliver import NO_SECRET, Sender
from pipeline.notify import JobEvent, job_ended
from pipeline.options import JobOptions, Publish
from pipeline.publish import publish
from pipeline.rime.errors import BadRequest
from pipeline.stages import Context, settle_stage, stitch_stage, synth_stage
from pipeline.store import State, deliveries
from pipeline.store.deliveries import DeliveryState, DeliveryStatus
from pipeline.store.schema import DELIVERIES, utcnow
from pipeline.webhook import DeliveryPolicy
from tests.fixtures.jobs import Job, context, plan_of, record, summary, texts_of
from tests.fixtures.leaks import assert_no_piece_of, database_text
from tests.fixtures.services import closed_port
from tests.fixtures.synthesizers import ToneSynthesizer
from tests.fixtures.webhooks import Receiver, signed_by, silent_port
from workers.commands import cancel

SECRET = "whsec-int-8c1f0e9d7b6a5c43"
TOKEN = "tok-Q7r2Xk9pLm"  # a Slack-style secret in a URL's path
QUICK = DeliveryPolicy(timeout_seconds=5.0, initial_wait=0.05, max_wait=0.2, jitter=0.0)


@pytest.fixture
def ctx(job_table: Engine, synthesizer: ToneSynthesizer) -> Context:
    return context(job_table, synthesizer)


def notifying(
    ctx: Context,
    dest: Path,
    urls: tuple[str, ...],
    scripts: int = 2,
    publish: Publish = Publish.AUTO,
) -> Job:
    plan = plan_of(str(dest), texts_of(scripts, 1), formats=("wav", "mp3"))
    return record(ctx.db, replace(plan, options=JobOptions(notify=urls, publish=publish)))


async def run_to_the_end(ctx: Context, job: Job) -> State:
    for pk in job.all_segments:
        await synth_stage(ctx, pk)
    for pk in job.scripts:
        stitch_stage(ctx, pk)
    return settle_stage(ctx, job.job_id)


def rows(db: Engine, job_id: str) -> list[DeliveryStatus]:
    with db.begin() as conn:
        return deliveries.for_job(conn, job_id)


def bodies(db: Engine, job_id: str) -> list[str]:
    with db.begin() as conn:
        return list(
            conn.scalars(
                select(DELIVERIES.c.body)
                .where(DELIVERIES.c.job_id == job_id)
                .order_by(DELIVERIES.c.id)
            )
        )


def sender(db: Engine, policy: DeliveryPolicy = QUICK, secret: str | None = SECRET) -> Sender:
    return Sender(db, policy, None if secret is None else SecretStr(secret))


# Recorded with the end


async def test_the_settle_that_ends_a_job_records_one_event_per_url_once(
    ctx: Context, tmp_path: Path
) -> None:
    urls = ("https://a.example.com/hook", f"https://hooks.example.com/services/{TOKEN}")
    job = notifying(ctx, tmp_path / "out", urls)

    assert await run_to_the_end(ctx, job) is State.DONE
    assert settle_stage(ctx, job.job_id) is State.DONE  # a second rollup, as a redelivery

    recorded = rows(ctx.db, job.job_id)
    assert [(r.event, r.state, r.attempts) for r in recorded] == [
        ("job.published", DeliveryState.PENDING, 0)
    ] * 2
    # Shown redacted, kept whole for sending.
    assert [r.url for r in recorded] == ["https://a.example.com/…", "https://hooks.example.com/…"]
    first, second = bodies(ctx.db, job.job_id)
    assert first == second  # one event, built once


async def test_a_release_left_for_a_manual_publish_is_done_then_published(
    ctx: Context, tmp_path: Path
) -> None:
    job = notifying(ctx, tmp_path / "out", ("https://a.example.com/",), publish=Publish.MANUAL)

    assert await run_to_the_end(ctx, job) is State.DONE
    assert [r.event for r in rows(ctx.db, job.job_id)] == ["job.done"]

    publish(ctx.db, job.job_id)
    publish(ctx.db, job.job_id)  # published again (a publish run twice): told each time

    assert [r.event for r in rows(ctx.db, job.job_id)] == ["job.done"] + ["job.published"] * 2
    published = json.loads(bodies(ctx.db, job.job_id)[-1])
    assert published["event"] == "job.published" and published["release"] == job.job_id


async def test_the_event_describes_the_job_and_each_output(ctx: Context, tmp_path: Path) -> None:
    job = notifying(ctx, tmp_path / "out", ("https://a.example.com/",))
    await run_to_the_end(ctx, job)
    [body] = bodies(ctx.db, job.job_id)
    event = json.loads(body)

    over = summary(ctx.db, job.job_id)
    assert event["id"].startswith("evt_") and len(event["id"]) == 28
    assert event["event"] == "job.published"
    assert event["created_at"].endswith("Z")
    assert event["production"] == {"name": "stage tests", "destination": str(tmp_path / "out")}
    assert event["job_id"] == event["release"] == job.job_id
    assert event["state"] == "done" and event["error"] is None
    assert event["scripts"] == {"total": 2, "done": 2, "failed": 0, "cancelled": 0}
    assert event["chars"] == job.plan.chars == over.job.chars
    assert event["billed_chars"] == over.job.billed_chars == job.plan.chars
    outputs = event["outputs"]
    assert [(o["script"], o["format"]) for o in outputs] == [
        ("script-0", "wav"),
        ("script-0", "mp3"),
        ("script-1", "wav"),
        ("script-1", "mp3"),
    ]
    for output in outputs:
        data = Path(output["uri"]).read_bytes()
        assert output["sha256"] == hashlib.sha256(data).hexdigest()
        assert output["bytes"] == len(data)


async def test_a_failed_job_records_job_failed(
    ctx: Context, tmp_path: Path, synthesizer: ToneSynthesizer
) -> None:
    job = notifying(ctx, tmp_path / "out", ("https://a.example.com/",))
    synthesizer.on_text(job.text(0, 0), BadRequest("unknown speaker", status=400))

    assert await run_to_the_end(ctx, job) is State.FAILED

    [row] = rows(ctx.db, job.job_id)
    assert row.event == "job.failed"
    event = json.loads(bodies(ctx.db, job.job_id)[0])
    assert event["state"] == "failed" and event["error"] == "1 script(s) failed"
    assert event["scripts"] == {"total": 2, "done": 1, "failed": 1, "cancelled": 0}
    assert [o["script"] for o in event["outputs"]] == ["script-1", "script-1"]


async def test_a_cancel_records_job_cancelled(
    ctx: Context, tmp_path: Path, database_url: str
) -> None:
    job = notifying(ctx, tmp_path / "out", ("https://a.example.com/",))
    await synth_stage(ctx, job.segments[0][0])

    cancel(job.job_id, database_url=database_url)

    [row] = rows(ctx.db, job.job_id)
    assert row.event == "job.cancelled"
    assert '"state":"cancelled"' in bodies(ctx.db, job.job_id)[0]
    # Settling the cancelled job afterwards tells nobody again.
    assert settle_stage(ctx, job.job_id) is State.CANCELLED
    assert len(rows(ctx.db, job.job_id)) == 1


async def test_a_job_without_webhooks_records_nothing(ctx: Context, tmp_path: Path) -> None:
    job = notifying(ctx, tmp_path / "out", ())
    assert await run_to_the_end(ctx, job) is State.DONE
    assert rows(ctx.db, job.job_id) == []


def test_an_end_rolled_back_leaves_no_event(ctx: Context, tmp_path: Path) -> None:
    job = notifying(ctx, tmp_path / "out", ("https://a.example.com/",))
    with pytest.raises(RuntimeError), ctx.db.begin() as conn:
        assert job_ended(conn, job.job_id, JobEvent.DONE)
        raise RuntimeError("the end did not commit")
    with ctx.db.begin() as conn:
        assert conn.scalar(select(func.count()).select_from(DELIVERIES)) == 0


# Delivered


async def test_each_url_gets_one_post_signed_with_the_same_event_id(
    ctx: Context, tmp_path: Path, receiver: Receiver
) -> None:
    urls = (receiver.url("/a"), receiver.url(f"/services/{TOKEN}?x=1"))
    job = notifying(ctx, tmp_path / "out", urls)
    await run_to_the_end(ctx, job)

    with sender(ctx.db) as s:
        attempted = s.due()

    assert [a.state for a in attempted] == [DeliveryState.DELIVERED] * 2
    got = receiver.received
    assert sorted(r.path for r in got) == sorted(["/a", f"/services/{TOKEN}?x=1"])
    assert all(r.method == "POST" for r in got)
    assert all(signed_by(SECRET, r) for r in got)
    assert not any(signed_by("another secret", r) for r in got)
    [body] = {r.body for r in got}
    assert body.decode() == bodies(ctx.db, job.job_id)[0]
    assert {r.event_id for r in got} == {got[0].document["id"]}
    assert {r.headers["rime-batch-event"] for r in got} == {"job.published"}
    assert {r.headers["content-type"] for r in got} == {"application/json"}
    recorded = rows(ctx.db, job.job_id)
    assert [(r.state, r.attempts, r.last_status) for r in recorded] == [
        (DeliveryState.DELIVERED, 1, 200)
    ] * 2
    assert all(r.delivered_at is not None and r.next_attempt_at is None for r in recorded)
    # Delivered is over: nothing more is sent.
    with sender(ctx.db) as s:
        assert s.due() == []
    assert len(receiver.received) == 2


async def test_a_receiver_that_fails_twice_is_retried_and_marked_delivered(
    ctx: Context, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answer(500, 503)
    job = notifying(ctx, tmp_path / "out", (receiver.url(),))
    await run_to_the_end(ctx, job)

    with sender(ctx.db) as s:
        attempted = s.drain(job.job_id, 10.0)

    assert [(a.attempt, a.state, a.status) for a in attempted] == [
        (1, DeliveryState.PENDING, 500),
        (2, DeliveryState.PENDING, 503),
        (3, DeliveryState.DELIVERED, 200),
    ]
    got = receiver.received
    assert [r.status for r in got] == [500, 503, 200]
    assert len({r.body for r in got}) == 1 and len({r.event_id for r in got}) == 1
    assert all(signed_by(SECRET, r) for r in got)
    # Backed off between attempts, as the policy says.
    assert got[1].at - got[0].at >= 0.04 and got[2].at - got[1].at >= 0.09
    [row] = rows(ctx.db, job.job_id)
    assert (row.state, row.attempts, row.last_status, row.last_error) == (
        DeliveryState.DELIVERED,
        3,
        200,
        None,
    )


async def test_a_receiver_that_is_down_stays_pending_with_its_error_then_fails_when_time_is_up(
    ctx: Context, tmp_path: Path
) -> None:
    policy = replace(QUICK, give_up_seconds=1.0)
    with closed_port() as port:
        job = notifying(ctx, tmp_path / "out", (f"http://127.0.0.1:{port}/services/{TOKEN}",))
        await run_to_the_end(ctx, job)

        with sender(ctx.db, policy) as s:
            started = time.monotonic()
            s.drain(job.job_id, 0.3)
            assert time.monotonic() - started < 2.0
        [row] = rows(ctx.db, job.job_id)
        assert row.state is DeliveryState.PENDING and row.attempts >= 2
        assert row.last_status is None
        assert row.last_error is not None and row.last_error.startswith("ConnectError")
        assert TOKEN not in row.last_error

        time.sleep(1.0)  # past the give-up time
        with sender(ctx.db, policy) as s:
            [last] = s.due()
    assert last.state is DeliveryState.FAILED
    [row] = rows(ctx.db, job.job_id)
    assert row.state is DeliveryState.FAILED and row.next_attempt_at is None
    assert row.last_error is not None
    assert row.last_error.startswith(f"gave up after {row.attempts} attempt(s): ConnectError")
    # The job's own outcome is what it was.
    assert summary(ctx.db, job.job_id).job.state is State.DONE


async def test_a_hung_receiver_is_given_up_on_within_the_senders_budget(
    ctx: Context, tmp_path: Path
) -> None:
    with silent_port() as port:
        job = notifying(ctx, tmp_path / "out", (f"http://127.0.0.1:{port}/",))
        await run_to_the_end(ctx, job)
        slow = replace(QUICK, timeout_seconds=30.0)
        with sender(ctx.db, slow) as s:
            started = time.monotonic()
            s.drain(job.job_id, 0.5)
            took = time.monotonic() - started
    assert took < 3.0  # the request's own timeout (30 s) is cut to what is left of 0.5 s
    [row] = rows(ctx.db, job.job_id)
    assert row.state is DeliveryState.PENDING
    assert row.last_error is not None and "Timeout" in row.last_error


async def test_two_senders_never_post_one_delivery_at_once(
    ctx: Context, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.delay = 0.5
    job = notifying(ctx, tmp_path / "out", (receiver.url(),))
    await run_to_the_end(ctx, job)
    [row] = rows(ctx.db, job.job_id)
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def send() -> None:
        with sender(ctx.db) as s:
            start.wait()
            outcomes.append(s.attempt(row.delivery_id))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(o is None for o in outcomes) == [False, True]
    assert len(receiver.received) == 1
    assert rows(ctx.db, job.job_id)[0].attempts == 1


async def test_an_attempt_whose_sender_died_is_made_again_with_the_same_event_id(
    ctx: Context, tmp_path: Path, receiver: Receiver
) -> None:
    job = notifying(ctx, tmp_path / "out", (receiver.url(),))
    await run_to_the_end(ctx, job)
    [row] = rows(ctx.db, job.job_id)
    # A sender claimed it and died before recording anything: its lease runs out.
    now = utcnow()
    with ctx.db.begin() as conn:
        lost = deliveries.claim(conn, row.delivery_id, now, now + timedelta(seconds=0.2))
    assert lost is not None and lost.attempt == 1
    with sender(ctx.db) as s:
        assert s.due() == []  # held until the lease is over
        time.sleep(0.3)
        [again] = s.due()

    assert (again.attempt, again.state) == (2, DeliveryState.DELIVERED)
    [got] = receiver.received
    assert got.event_id == got.document["id"]
    # The dead sender's late word does not overwrite the newer attempt's.
    with ctx.db.begin() as conn:
        assert not deliveries.mark_retry(
            conn, lost, status=None, error="late", next_attempt_at=utcnow()
        )
    assert rows(ctx.db, job.job_id)[0].state is DeliveryState.DELIVERED


async def test_without_a_secret_nothing_is_sent_and_the_row_says_why(
    ctx: Context, tmp_path: Path, receiver: Receiver
) -> None:
    job = notifying(ctx, tmp_path / "out", (receiver.url(),))
    await run_to_the_end(ctx, job)
    with sender(ctx.db, secret=None) as s:
        [attempted] = s.due()
    assert attempted.state is DeliveryState.PENDING and attempted.error == NO_SECRET
    assert receiver.received == []
    assert rows(ctx.db, job.job_id)[0].last_error == NO_SECRET


async def test_a_redirect_is_not_followed_but_retried(
    ctx: Context, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answer(302)
    job = notifying(ctx, tmp_path / "out", (receiver.url(),))
    await run_to_the_end(ctx, job)
    with sender(ctx.db) as s:
        [first] = s.due()
    assert (first.state, first.status, first.error) == (DeliveryState.PENDING, 302, "HTTP 302")
    assert len(receiver.received) == 1


async def test_the_secret_and_the_urls_token_are_in_no_row_and_no_log_line(
    ctx: Context,
    tmp_path: Path,
    receiver: Receiver,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.answer(500)
    with closed_port() as port:
        urls = (receiver.url(f"/services/{TOKEN}"), f"http://127.0.0.1:{port}/h?token={TOKEN}")
        job = notifying(ctx, tmp_path / "out", urls)
        await run_to_the_end(ctx, job)
        with sender(ctx.db) as s:
            s.drain(job.job_id, 1.0)

    states = sorted(r.state for r in rows(ctx.db, job.job_id))
    assert states == [DeliveryState.DELIVERED, DeliveryState.PENDING]
    assert "webhook delivered" in caplog.text and "webhook not delivered" in caplog.text
    assert_no_piece_of(SECRET, {"database": database_text(database_url), "logs": caplog.text})
    assert TOKEN not in caplog.text
    assert all(TOKEN not in (r.last_error or "") for r in rows(ctx.db, job.job_id))
