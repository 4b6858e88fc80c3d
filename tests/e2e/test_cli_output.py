"""What a user reads: log lines once each in one format, progress by phase, retries that name
their segment, no traceback for a fault that was retried, clean `--help`, `--version`, and one
job table whatever the working folder.

Each test runs the real console script: logging is set up per process, and a terminal (a pty)
gets other output than a pipe.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
from collections import Counter
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
import typer.main

import pipeline
from pipeline.cli import app
from rime_local.server import RunningEngine
from tests.fixtures.cli import Cli, CliResult, executable
from tests.fixtures.s3 import S3Env

EngineFactory = Callable[..., RunningEngine]
KEY = "rk-e2e-output-0c3d9a71"

MANIFEST = """\
job: noise
output: out
defaults:
  speaker: cove
  modelId: mistv2
  samplingRate: 8000
  formats: [wav]
  max_chars: 60
scripts:
  - id: ivr/welcome
    text: Thank you for calling. Please listen closely. Our menu has changed.
  - id: ivr/menu
    text: For appointments, press 1. For billing, press 2. For anything else, stay on the line.
  - id: ivr/goodbye
    text: Goodbye.
"""
SCRIPTS = ("ivr/welcome", "ivr/menu", "ivr/goodbye")

# A log line when stderr is not a terminal: time, level, message.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) (.*)$")
RETRY_LINE = re.compile(r"retrying segment (\S+)#(\d+) \(attempt (\d+)/(\d+) failed\): \S")
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def write_manifest(folder: Path) -> Path:
    """The test's manifest in its folder."""
    path = folder / "jobs.yaml"
    path.write_text(MANIFEST, encoding="utf-8")
    return path


def log_messages(result: CliResult) -> list[str]:
    """The messages of the log lines on stderr, after checking that each is one line."""
    messages = []
    for line in result.stderr.splitlines():
        found = LOG_LINE.match(line)
        if found:
            messages.append(found.group(2))
    return messages


def run_on_a_terminal(cli: Cli, *args: str) -> tuple[int, str]:
    """Run `rime-batch args...` with stderr on a pty, as in a terminal; exit code and stderr."""
    leader, follower = pty.openpty()
    env = {**cli.env(), "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [executable(), *args],
        cwd=cli.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    code = proc.wait(timeout=180)
    return code, ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def test_each_event_is_one_log_line_in_one_format(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    write_manifest(tmp_path)

    result = cli.using(engine=engine, api_key=KEY).run("render", "jobs.yaml")

    assert result.returncode == 0, result
    messages = log_messages(result)
    assert messages, result
    assert [m for m, n in Counter(messages).items() if n > 1] == [], result
    # The logger's name or a second level never gets into the line.
    assert "rime_batch" not in result.stderr, result
    assert not re.search(r"\b(INFO|WARNING):", result.stderr), result
    for script in SCRIPTS:
        done = [m for m in messages if m.startswith(f"script {script} done")]
        assert len(done) == 1, result


def test_on_a_terminal_each_log_line_is_printed_once_without_a_second_level(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    write_manifest(tmp_path)

    code, shown = run_on_a_terminal(cli.using(engine=engine, api_key=KEY), "render", "jobs.yaml")

    assert code == 0, shown
    # Rich's handler prints its own time and level column; the message follows alone.
    assert "INFO:" not in shown and "rime_batch" not in shown, shown
    for script in SCRIPTS:
        assert shown.count(f"script {script} done") == 1, shown
    # Stitching is a bar of its own, counted in scripts.
    assert re.search(r"stitching\s.*\b3/3\b", shown), shown
    assert re.search(r"synthesizing\s.*\b\d+/\d+\b", shown), shown


def test_without_a_terminal_stitching_is_a_phase_with_its_own_count(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    write_manifest(tmp_path)

    result = cli.using(engine=engine, api_key=KEY).run("render", "jobs.yaml")

    assert result.returncode == 0, result
    messages = log_messages(result)
    started = [m for m in messages if m.startswith("stitching ")]
    assert sorted(m.split()[1] for m in started) == sorted(SCRIPTS), result
    assert {m.split("(")[-1] for m in started} == {f"{n}/3 scripts)" for n in (1, 2, 3)}
    for script in SCRIPTS:
        stitching = messages.index(next(m for m in started if m.split()[1] == script))
        done = next(i for i, m in enumerate(messages) if m.startswith(f"script {script} done"))
        assert stitching < done, result
    assert messages[-2].endswith("(3/3 scripts)"), result
    # Then the release is published, and says so.
    assert messages[-1].startswith("published release "), result


def test_retried_faults_name_their_segment_and_leave_no_traceback(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(
        api_keys=[KEY], fault_seed=7, fault_error_rate=0.2, fault_cut_rate=0.2, burst_429=2
    )
    write_manifest(tmp_path)
    run = cli.using(
        engine=engine,
        api_key=KEY,
        RIME_BATCH_RETRY_MAX_ATTEMPTS="12",
        RIME_BATCH_RETRY_INITIAL_WAIT="0.01",
        RIME_BATCH_RETRY_MAX_WAIT="0.05",
        RIME_BATCH_RETRY_JITTER="0.01",
    )

    result = run.run("render", "jobs.yaml")

    assert result.returncode == 0, result
    faults = engine.metrics()["faults"]
    assert faults.get("cut", 0) > 0, faults
    assert "Traceback" not in result.output, result
    retries = [m for m in log_messages(result) if m.startswith("retrying")]
    # The preflight's request meets faults too (the 429 burst first): its own warning lines.
    preflight = [m for m in log_messages(result) if m.startswith("preflight of")]
    assert len(retries) + len(preflight) >= faults["cut"] + 2, result
    segments = {"ivr/welcome": 3, "ivr/menu": 3, "ivr/goodbye": 1}
    for line in retries:
        found = RETRY_LINE.match(line)
        assert found, line
        script, index, attempt, of = found.groups()
        assert int(index) < segments[script], line
        assert 1 <= int(attempt) < int(of) == 12, line
    assert any(" stream cut" in line for line in retries), retries


def test_s3_libraries_stay_quiet_unless_debug(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path, s3: S3Env, s3_bucket: str
) -> None:
    engine = engine_factory(api_keys=[KEY])
    write_manifest(tmp_path)
    run = cli.using(engine=engine, api_key=KEY)

    quiet = run.run("render", "jobs.yaml", "-o", s3.uri(s3_bucket, "quiet"))
    loud = run.using(RIME_BATCH_LOG_LEVEL="DEBUG").run(
        "render", "jobs.yaml", "-o", s3.uri(s3_bucket, "loud")
    )

    assert quiet.returncode == 0, quiet
    assert loud.returncode == 0, loud
    # At debug level botocore speaks (so the check below could see it)...
    assert "credentials" in loud.stderr.lower(), loud.stderr[-3000:]
    # ...and by default no line of botocore, boto3, s3transfer or urllib3 is left.
    chatty = ("botocore", "boto3", "s3transfer", "urllib3", "Found credentials", "Endpoint")
    leaked = [line for line in quiet.stderr.splitlines() if any(w in line for w in chatty)]
    assert leaked == [], quiet
    assert all(level in {"INFO", "WARNING"} for level in levels_of(quiet)), quiet


def levels_of(result: CliResult) -> set[str]:
    """The levels of the log lines on stderr."""
    return {m.group(1) for line in result.stderr.splitlines() if (m := LOG_LINE.match(line))}


def commands() -> dict[str, list[str]]:
    """Every command of the app, and the long names of its options."""
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    return {
        name: [o for p in command.params for o in (*p.opts, *p.secondary_opts) if o[:2] == "--"]
        for name, command in group.commands.items()
    }


def test_help_is_clean_at_80_columns(cli: Cli) -> None:
    narrow = cli.using(COLUMNS="80")
    every = commands()
    assert {"render", "status", "segment", "worker", "engine"} <= set(every)
    for name, options in {"": [], **every}.items():
        result = narrow.run(*([name] if name else []), "--help")
        assert result.returncode == 0, result
        text = result.stdout
        assert "<bool>" not in text, result
        # Click marks a command's sub-commands and a variadic argument (`check FILE...`)
        # with three dots; any other three dots are a truncation.
        untruncated = re.sub(r"(\[ARGS\]|\{?[A-Z]+\}?)\.\.\.", "", text)
        assert "…" not in text and "..." not in untruncated, result
        assert max(len(line) for line in text.splitlines()) <= 80, result
        for option in options:
            assert re.search(rf"(^|[\s,]){re.escape(option)}\b", text), (option, result)
    top = narrow.run("--help").stdout
    for name in every:
        assert re.search(rf"^  {name}\s", top, re.M), (name, top)


def test_version_prints_the_installed_version(cli: Cli) -> None:
    result = cli.run("--version")

    assert result.returncode == 0, result
    assert result.stdout == f"rime-batch {version('rime-batch')}\n", result
    assert version("rime-batch") == pipeline.__version__


def test_the_default_job_table_is_in_the_user_data_folder_not_the_working_one(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    data = tmp_path / "data-home"
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    write_manifest(work)
    base = cli.using(engine=engine, api_key=KEY, XDG_DATA_HOME=str(data))

    def unset_database(env: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in env.items() if k != "DATABASE_URL"}

    def run(folder: Path, *args: str) -> CliResult:
        done = subprocess.run(
            [executable(), *args],
            cwd=folder,
            env=unset_database(base.env()),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        return CliResult(tuple(args), done.returncode, done.stdout, done.stderr, 0.0)

    rendered = run(work, "render", "jobs.yaml")
    listed = run(elsewhere, "status")

    assert rendered.returncode == 0, rendered
    assert listed.returncode == 0, listed
    table = data / "rime-batch" / "rime-batch.db"
    assert table.is_file()
    assert [p.name for p in work.iterdir() if p.suffix == ".db" or ".db-" in p.name] == []
    assert list(elsewhere.iterdir()) == []
    # `status` from another folder says which table it read, and finds the job there.
    assert listed.stdout.splitlines()[0] == f"job table: sqlite:///{table}", listed
    assert "noise" in listed.stdout and "done" in listed.stdout, listed


@pytest.mark.postgres
def test_status_names_its_job_table_without_the_password(cli: Cli, postgres_url: str) -> None:
    secret = "hunter2-not-needed"
    # Trust authentication lets any password in, so the URL works and carries a secret.
    with_password = postgres_url.replace("postgres@", f"postgres:{secret}@", 1)
    assert secret in with_password

    result = cli.using(database_url=with_password).run("status")

    assert result.returncode == 0, result
    assert secret not in result.output, result
    assert result.stdout.splitlines()[0].startswith("job table: postgresql+psycopg://postgres:***@")
