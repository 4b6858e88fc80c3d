"""A service that does not answer (the broker, the job table) costs one line naming it and its
URL, never its password, a non-zero exit, no traceback, and leaves no job running."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_render import write
from tests.fixtures.cli import Cli, CliResult
from tests.fixtures.services import closed_port

PASSWORD = "pw-7d0c5e"  # made up; it must never be printed
MANIFEST = """\
job: unsent
output: out
scripts:
  - id: hello
    text: Hello there.
  - id: bye
    text: Goodbye now.
"""


def one_line(result: CliResult, *fragments: str) -> str:
    """The single error line of a command that failed, after checking how it failed."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.output, result
    assert PASSWORD not in result.output, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result
    assert lines[0].startswith("error: cannot reach "), result
    for fragment in fragments:
        assert fragment in lines[0], result
    return lines[0]


def test_submit_with_the_broker_down_records_nothing(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path, MANIFEST)
    with closed_port() as port:
        broker = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
        result = cli.using(CELERY_BROKER_URL=broker).run("submit", "jobs.yaml")

    one_line(result, "the broker", f"redis://127.0.0.1:{port}/0")
    listed = cli.run("status")
    assert listed.returncode == 0, listed
    assert "unsent" not in listed.stdout  # no job was recorded, so none is left running
    assert "running" not in listed.stdout


def test_submit_with_the_job_table_down_says_so(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path, MANIFEST)
    with closed_port() as port:
        database = f"postgresql+psycopg://rime:{PASSWORD}@127.0.0.1:{port}/rime_batch"
        result = cli.using(database_url=database).run("submit", "jobs.yaml")

    one_line(result, "the job table", f"postgresql+psycopg://127.0.0.1:{port}/rime_batch")


@pytest.mark.parametrize("command", [("cancel", "abcdef"), ("status",), ("worker",)])
def test_other_commands_with_the_job_table_down_say_so_in_one_line(
    cli: Cli, command: tuple[str, ...]
) -> None:
    with closed_port() as port:
        database = f"postgresql://rime:{PASSWORD}@127.0.0.1:{port}/rime_batch"
        result = cli.using(database_url=database).run(*command, timeout=60)

    one_line(result, "the job table", f"127.0.0.1:{port}/rime_batch")
