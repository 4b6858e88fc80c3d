"""Webhooks from the command line: `render`, `cancel`, `status` and `deliver` as real subprocesses,
each webhook a real HTTP receiver on loopback (or a port that refuses, or one that never
answers), the job table a SQLite file.

What must hold: a webhook arrives once per URL, signed as the README documents; a receiver that
fails is retried; one that is down or hung changes neither the job's outcome nor its exit code,
and holds the render no longer than `RIME_BATCH_WEBHOOK_WAIT_SECONDS`; the secret is in no
output, log line or row, and a URL's token only in the row that sends to it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.store import create_engine_for
from pipeline.store.schema import JOBS
from tests.fixtures.cli import Cli, CliResult
from tests.fixtures.leaks import assert_no_piece_of, database_text
from tests.fixtures.services import closed_port
from tests.fixtures.webhooks import Receiver, signed_by, silent_port

SECRET = "whsec-e2e-5b7d9f1a3c2e4d6f"
TOKEN = "tok-Zq81Lw3vRt"

MANIFEST = """\
job: notified
output: out
{notify}defaults:
  speaker: cove
  modelId: mistv2
  samplingRate: 8000
  formats: [wav]
scripts:
  - id: welcome
    text: Thank you for calling.
  - id: menu
    text: For appointments, press one.
"""

# Quick retries; every test sets its own wait.
QUICK = {
    "RIME_BATCH_WEBHOOK_SECRET": SECRET,
    "RIME_BATCH_WEBHOOK_INITIAL_WAIT": "0.2",
    "RIME_BATCH_WEBHOOK_MAX_WAIT": "0.5",
    "RIME_BATCH_WEBHOOK_JITTER": "0.05",
}


def write_manifest(folder: Path, *urls: str) -> Path:
    notify = "notify:\n" + "".join(f"  - {url}\n" for url in urls) if urls else ""
    path = folder / "jobs.yaml"
    path.write_text(MANIFEST.format(notify=notify), encoding="utf-8")
    return path


def job_id_of(result: CliResult) -> str:
    found = re.search(r"job ([0-9a-f]{12}):", result.stderr)
    assert found, f"no job id announced\n{result}"
    return found.group(1)


def job_row(cli: Cli, job_id: str) -> dict[str, Any]:
    engine = create_engine_for(cli.database_url)
    try:
        with engine.connect() as conn:
            query = sa.select(JOBS.c.state, JOBS.c.finished_at).where(JOBS.c.id == job_id)
            return dict(conn.execute(query).mappings().one())
    finally:
        engine.dispose()


def delivery_rows(cli: Cli, job_id: str) -> list[dict[str, Any]]:
    engine = create_engine_for(cli.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT event, state, attempts, last_status, last_error FROM deliveries "
                    "WHERE job_id = :id ORDER BY id"
                ),
                {"id": job_id},
            ).mappings()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def seconds_since_the_end(cli: Cli, job_id: str) -> float:
    """From the job's end as the job table recorded it until now."""
    finished: datetime = job_row(cli, job_id)["finished_at"]
    return time.time() - finished.timestamp()


def test_a_render_tells_each_webhook_once_signed_and_status_shows_them(
    cli: Cli, receiver: Receiver, tmp_path: Path
) -> None:
    slack_like = receiver.url(f"/services/T0/B0/{TOKEN}")
    write_manifest(tmp_path, receiver.url("/hooks/a"))
    run = cli.using(**QUICK, RIME_BATCH_WEBHOOK_WAIT_SECONDS="10")

    result = run.run("render", "jobs.yaml", "--notify", slack_like)

    assert result.returncode == 0, result
    job_id = job_id_of(result)
    got = receiver.wait_for(2, timeout=5)
    assert len(got) == 2  # once per URL, however long the render took
    assert sorted(r.path for r in got) == sorted(["/hooks/a", f"/services/T0/B0/{TOKEN}"])
    assert all(signed_by(SECRET, r) for r in got)
    [body] = {r.body for r in got}
    event = json.loads(body)
    assert {r.event_id for r in got} == {event["id"]}
    assert event["event"] == "job.published" and event["state"] == "done"
    assert event["job_id"] == event["release"] == job_id
    assert event["production"] == {"name": "notified", "destination": str(tmp_path / "out")}
    assert event["scripts"] == {"total": 2, "done": 2, "failed": 0, "cancelled": 0}
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (event["chars"], event["billed_chars"]) == (results["chars"], results["billed_chars"])
    by_script = {s["id"]: s["outputs"] for s in results["scripts"]}
    for output in event["outputs"]:
        [recorded] = by_script[output["script"]]
        assert (output["uri"], output["sha256"]) == (recorded["uri"], recorded["sha256"])
        assert output["sha256"] == hashlib.sha256(Path(output["uri"]).read_bytes()).hexdigest()

    status = run.run("status", job_id)
    assert status.returncode == 0, status
    assert "webhooks" in status.stdout and status.stdout.count("delivered") >= 2
    assert f"http://127.0.0.1:{receiver.port}/…" in status.stdout
    assert TOKEN not in status.output and TOKEN not in result.output
    everywhere = {
        "render": result.output,
        "status": status.output,
        "database": database_text(cli.database_url),
        "destination": (tmp_path / "out" / "results.json").read_text(),
    }
    assert_no_piece_of(SECRET, everywhere)


def test_a_receiver_that_fails_twice_is_retried_while_the_render_waits(
    cli: Cli, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.answer(500, 500)
    write_manifest(tmp_path, receiver.url())
    run = cli.using(**QUICK, RIME_BATCH_WEBHOOK_WAIT_SECONDS="10")

    result = run.run("render", "jobs.yaml")

    assert result.returncode == 0, result
    assert [r.status for r in receiver.received] == [500, 500, 200]
    assert len({r.event_id for r in receiver.received}) == 1
    assert all(signed_by(SECRET, r) for r in receiver.received)
    [row] = delivery_rows(cli, job_id_of(result))
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 3, 200)
    assert "webhook not delivered" in result.stderr and "HTTP 500" in result.stderr


def test_a_receiver_that_is_down_changes_neither_the_outcome_nor_the_exit_code(
    cli: Cli, tmp_path: Path
) -> None:
    wait = 1.5
    run = cli.using(**QUICK, RIME_BATCH_WEBHOOK_WAIT_SECONDS=str(wait))
    with closed_port() as port:
        write_manifest(tmp_path, f"http://127.0.0.1:{port}/services/{TOKEN}")
        result = run.run("render", "jobs.yaml")
        after_the_end = seconds_since_the_end(run, job_id_of(result))

    assert result.returncode == 0, result
    job_id = job_id_of(result)
    assert job_row(run, job_id)["state"] == "done"
    assert json.loads((tmp_path / "out" / "results.json").read_text())["state"] == "done"
    # The wait, and room for a loaded machine to print the summary and exit.
    assert after_the_end < wait + 6.0, after_the_end
    [row] = delivery_rows(run, job_id)
    assert row["state"] == "pending" and row["attempts"] >= 2
    assert row["last_error"].startswith("ConnectError")
    assert "1 not delivered yet" in result.stderr
    status = run.run("status", job_id)
    assert "pending" in status.stdout and "ConnectError" in status.stdout
    assert TOKEN not in result.output + status.output


def test_a_hung_receiver_holds_the_render_no_longer_than_the_wait(cli: Cli, tmp_path: Path) -> None:
    wait = 1.5
    # A request's own timeout is far longer than the wait: the wait must cut it short.
    run = cli.using(
        **QUICK, RIME_BATCH_WEBHOOK_WAIT_SECONDS=str(wait), RIME_BATCH_WEBHOOK_TIMEOUT_SECONDS="60"
    )
    with silent_port() as port:
        write_manifest(tmp_path, f"http://127.0.0.1:{port}/hook")
        result = run.run("render", "jobs.yaml")
        after_the_end = seconds_since_the_end(run, job_id_of(result))

    assert result.returncode == 0, result
    assert after_the_end < wait + 6.0, after_the_end
    [row] = delivery_rows(run, job_id_of(result))
    assert row["state"] == "pending" and "Timeout" in row["last_error"]


def test_deliver_sends_what_is_due_and_gives_up_when_time_is_up(
    cli: Cli, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.default = 503
    with closed_port() as port:
        write_manifest(tmp_path, receiver.url(), f"http://127.0.0.1:{port}/")
        run = cli.using(
            **QUICK,
            RIME_BATCH_WEBHOOK_WAIT_SECONDS="0.5",
            RIME_BATCH_WEBHOOK_GIVE_UP_SECONDS="4",
        )
        result = run.run("render", "jobs.yaml")
        assert result.returncode == 0, result
        job_id = job_id_of(result)
        assert [r["state"] for r in delivery_rows(run, job_id)] == ["pending", "pending"]

        receiver.default = 200  # back up
        time.sleep(4.0)  # every retry is due, and the give-up time has passed
        delivered = run.run("deliver")

    assert delivered.returncode == 0, delivered
    assert "webhook attempts" in delivered.stdout
    rows = delivery_rows(run, job_id)
    assert [r["state"] for r in rows] == ["delivered", "failed"]
    assert rows[1]["last_error"].startswith("gave up after")
    assert receiver.received[-1].status == 200 and signed_by(SECRET, receiver.received[-1])
    # Nothing is due any more.
    assert "no webhook delivery is due" in run.run("deliver", job_id).stdout


def test_a_cancel_tells_the_webhooks_job_cancelled(
    cli: Cli, receiver: Receiver, tmp_path: Path
) -> None:
    write_manifest(tmp_path, receiver.url())
    run = cli.using(**QUICK)
    saved = run.run("plan", "jobs.yaml", "--save")
    assert saved.returncode == 0, saved
    found = re.search(r"saved as job ([0-9a-f]{12})", saved.stdout)
    assert found, saved
    job_id = found.group(1)

    cancelled = run.run("cancel", job_id[:6])

    assert cancelled.returncode == 0, cancelled
    [request] = receiver.wait_for(1, timeout=5)
    assert signed_by(SECRET, request)
    assert request.document["event"] == "job.cancelled"
    assert request.document["state"] == "cancelled"
    assert request.document["job_id"] == job_id


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (("--notify", "ftp://example.com/x"), QUICK, "--notify: must be an http:// or https://"),
        ((), {}, "notify: webhooks are signed with RIME_BATCH_WEBHOOK_SECRET; set it first"),
        (("--notify", "https://x.example.com/"), {}, "RIME_BATCH_WEBHOOK_SECRET"),
    ],
)
def test_webhooks_that_cannot_be_sent_are_refused_before_anything_is_recorded(
    cli: Cli, tmp_path: Path, args: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    write_manifest(tmp_path, *(() if args else ("https://hooks.example.com/a",)))
    result = cli.using(**env).run("render", "jobs.yaml", *args)

    assert result.returncode == 2, result
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert "job " not in result.stderr  # no job announced, none recorded
    listed = cli.run("status")
    assert "notified" not in listed.stdout


def test_a_bad_notify_in_the_manifest_names_its_line_and_field(cli: Cli, tmp_path: Path) -> None:
    write_manifest(tmp_path, "https://ok.example.com/", "gopher://old.example.com/")
    result = cli.using(**QUICK).run("plan", "jobs.yaml")
    assert result.returncode == 2, result
    assert "jobs.yaml:5: notify[1]: must be an http:// or https:// URL, not gopher" in result.stderr
