"""Schedules over the command line: `schedule serve` renders due runs in-process with no broker
and submits nothing for an unchanged manifest (only-if-changed) until it is edited; a run that
cannot be submitted is recorded as failed and the next one still fires; manual publish; and
every refusal is one line, a non-zero exit and no traceback."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.store import create_engine_for
from rime_local.server import RunningEngine
from tests.e2e.test_releases import job_ids, job_of, published_set, results
from tests.e2e.test_render import KEY, write
from tests.fixtures.cli import Cli, CliResult
from tests.fixtures.services import closed_port, poll_until

EngineFactory = Callable[..., RunningEngine]
NAME = "nightly-prompts"


def manifest(folder: Path, text: str = "Thank you for calling. Please hold.") -> Path:
    """Two one-segment prompts (the second one fixed) into `out/` beside the manifest."""
    return write(
        folder,
        "job: prompts\noutput: out\ndefaults:\n  speaker: cove\n  modelId: mistv2\n"
        "  samplingRate: 8000\n  formats: [wav]\nscripts:\n"
        f"  - id: hold\n    text: {text}\n  - id: bye\n    text: Goodbye for now.\n",
    )


def schedule_rows(database_url: str) -> list[dict[str, object]]:
    """The runs in the job table, oldest first, with each job's options."""
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT r.outcome, r.job_id, r.error, j.options FROM schedule_runs r "
                    "LEFT JOIN jobs j ON j.id = r.job_id ORDER BY r.due_at"
                )
            ).mappings()
            return [dict(r) for r in rows]
    except sa.exc.OperationalError:
        return []  # no job table yet
    finally:
        engine.dispose()


def outcomes(database_url: str) -> list[str]:
    return [str(r["outcome"]) for r in schedule_rows(database_url)]


def one_line_refusal(result: CliResult, needle: str) -> None:
    """A refusal: non-zero exit, one `error:` line on stderr saying `needle`, no traceback."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.output, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    assert needle in lines[0], result


def test_serve_renders_only_what_changed_with_no_broker_and_stops_on_ctrl_c(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    with closed_port() as port:
        # A broker nobody answers at: serve must never need it.
        run = cli.using(
            engine=engine,
            api_key=KEY,
            CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0",
            RIME_BATCH_TICK_SECONDS="0.3",
        )
        path = manifest(tmp_path)
        added = run.run(
            "schedule", "add", NAME, path, "--cron", "* * * * * */2", "--only-if-changed"
        )
        assert added.returncode == 0, added
        assert "UTC" in added.stdout
        serving = run.start("schedule", "serve")
        out = tmp_path / "out"

        def seen(*wanted: str) -> Callable[[], bool]:
            def check() -> bool:
                assert serving.proc.poll() is None, serving.wait()
                got = outcomes(run.database_url)
                return all(got.count(w) >= n for w, n in _counts(wanted).items())

            return check

        poll_until(seen("submitted"), 60, "the first run", interval=0.2)
        poll_until(seen("submitted", "unchanged", "unchanged"), 30, "runs of nothing", interval=0.2)
        first = published_set(out)
        assert results(out)["state"] == "done"
        requests = engine.metrics()["completed"]
        assert requests >= 2  # both prompts, plus any preflight probe
        assert len(job_ids(run.database_url)) == 1

        # An edit of one prompt: the next run renders (one new segment), then nothing again.
        manifest(tmp_path, "Thank you for calling. All our agents are busy.")
        poll_until(seen("submitted", "submitted"), 30, "a run after the edit", interval=0.2)
        before = len(outcomes(run.database_url))
        poll_until(
            lambda: len(outcomes(run.database_url)) >= before + 2, 30, "later runs", interval=0.2
        )
        runs = schedule_rows(run.database_url)
        assert [r["outcome"] for r in runs].count("submitted") == 2, runs
        assert {r["outcome"] for r in runs} == {"submitted", "unchanged"}, runs
        assert all(r["job_id"] is None for r in runs if r["outcome"] == "unchanged")
        for r in runs:
            if r["outcome"] == "submitted":
                assert json.loads(str(r["options"]))["schedule"] == NAME, r
        assert len(job_ids(run.database_url)) == 2
        poll_until(
            lambda: results(out)["state"] == "done" and published_set(out) != first,
            30,
            "the edited release to publish",
            interval=0.2,
        )
        assert published_set(out)["bye.wav"] == first["bye.wav"]
        assert published_set(out)["hold.wav"] != first["hold.wav"]

        # Idle (nothing left to fire), then Ctrl-C: a clean stop.
        assert run.run("schedule", "remove", NAME).returncode == 0
        serving.signal(signal.SIGINT)
        stopped = serving.wait(timeout=30)
    assert stopped.returncode == 0, stopped
    assert "Traceback" not in stopped.output, stopped
    assert "stopped" in stopped.stderr
    assert re.search(rf"schedule {NAME} \(.* UTC\): unchanged, nothing submitted", stopped.stdout)


def _counts(wanted: tuple[str, ...]) -> dict[str, int]:
    return {w: wanted.count(w) for w in set(wanted)}


def test_a_run_that_cannot_be_submitted_fails_in_one_line_and_the_next_one_fires(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    path = manifest(tmp_path)
    assert run.run("schedule", "add", NAME, path, "--cron", "0 2 * * *").returncode == 0
    kept = path.read_text()
    path.unlink()

    gone = run.run("schedule", "run", NAME, "--here")

    assert gone.returncode == 1, gone
    assert "Traceback" not in gone.output, gone
    assert re.search(
        rf"schedule {NAME} \(.* UTC\): failed: .*jobs.yaml: the file does not exist", gone.stdout
    ), gone
    listed = run.run("schedule", "list")
    assert re.search(rf"{NAME} .*0 2 \* \* \*.* failed", listed.stdout), listed

    path.write_text(kept.replace("text: Goodbye", "text: [broken"))
    broken = run.run("schedule", "run", NAME, "--here")
    assert broken.returncode == 1 and "failed: " in broken.stdout, broken

    path.write_text(kept)
    again = run.run("schedule", "run", NAME, "--here")
    assert again.returncode == 0, again
    found = re.search(r"job ([0-9a-f]{12}) \(done\)", again.stdout)
    assert found, again
    assert [r["outcome"] for r in schedule_rows(run.database_url)] == [
        "failed",
        "failed",
        "submitted",
    ]
    assert results(tmp_path / "out")["release"] == found.group(1)
    listed = run.run("schedule", "list")
    assert re.search(rf"{NAME} .* submitted .*{found.group(1)}", listed.stdout), listed


def test_a_run_while_its_production_renders_fails_as_busy(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    # Slow enough that the render is still going when the schedule runs.
    engine = engine_factory(api_keys=[KEY], ttfb_ms=1500)
    run = cli.using(engine=engine, api_key=KEY)
    path = manifest(tmp_path)
    assert run.run("schedule", "add", NAME, path, "--cron", "0 2 * * *").returncode == 0
    rendering = run.start("render", path)
    job = job_of(rendering, run, set())

    busy = run.run("schedule", "run", NAME, "--here")

    assert busy.returncode == 1, busy
    assert f"already being rendered by job {job}" in busy.stdout, busy
    assert rendering.wait(timeout=120).returncode == 0
    [failed] = schedule_rows(run.database_url)
    assert failed["outcome"] == "failed" and failed["job_id"] is None
    assert job_ids(run.database_url) == {job}


def test_a_manual_schedule_leaves_its_release_for_publish(
    cli: Cli, engine: RunningEngine, tmp_path: Path
) -> None:
    run = cli.using(engine=engine)
    path = manifest(tmp_path)
    added = run.run(
        "schedule",
        "add",
        NAME,
        path,
        "--cron",
        "30 4 * * 1",
        "--publish",
        "manual",
        "--output",
        "elsewhere",
    )
    assert added.returncode == 0, added

    done = run.run("schedule", "run", NAME, "--here")

    assert done.returncode == 0, done
    found = re.search(r"job ([0-9a-f]{12}) \(done\)", done.stdout)
    assert found, done
    # --output was taken relative to where `schedule add` ran, and stored so.
    out = tmp_path / "elsewhere"
    assert (out / "releases" / found.group(1) / "hold.wav").is_file()
    assert published_set(out) == {}
    published = run.run("publish", "prompts", found.group(1))
    assert published.returncode == 0, published
    assert results(out)["release"] == found.group(1)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("schedule", "add", NAME, "{manifest}", "--cron", "61 * * * *"), "--cron '61 * * * *'"),
        (("schedule", "add", NAME, "{manifest}", "--cron", "nightly"), "give 5 fields"),
        (("schedule", "add", "two words", "{manifest}", "--cron", "0 2 * * *"), "schedule name"),
        (
            ("schedule", "add", NAME, "{manifest}", "--cron", "0 2 * * *", "--publish", "later"),
            "--publish: 'later' is not auto or manual",
        ),
        (
            ("schedule", "add", NAME, "{broken}", "--cron", "0 2 * * *"),
            "broken.yaml:12: scripts[1].txet: unknown key",
        ),
        (("schedule", "run", "nope"), "no schedule named 'nope'"),
        (("schedule", "remove", "nope"), "no schedule named 'nope'"),
    ],
)
def test_refusals_are_one_line(
    cli: Cli, tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    good = manifest(tmp_path)
    broken = write(
        tmp_path, good.read_text().replace("text: Goodbye", "txet: Goodbye"), "broken.yaml"
    )
    argv = [a.format(manifest=good, broken=broken) for a in args]

    refused = cli.run(*argv)

    one_line_refusal(refused, needle)
    assert refused.returncode == 2
    assert outcomes(cli.database_url) == []


def test_a_name_is_taken_once_and_list_shows_the_next_due_time(cli: Cli, tmp_path: Path) -> None:
    path = manifest(tmp_path)
    assert cli.run("schedule", "add", NAME, path, "--cron", "0 2 * * *").returncode == 0
    one_line_refusal(
        cli.run("schedule", "add", NAME, path, "--cron", "0 3 * * *"),
        f"a schedule named {NAME!r} exists",
    )
    listed = cli.run("schedule", "list")
    assert listed.returncode == 0, listed
    assert "times in UTC" in listed.stdout
    assert re.search(rf"{NAME} .*0 2 \* \* \* .* \d{{4}}-\d\d-\d\d 02:00:00 ", listed.stdout), (
        listed
    )
