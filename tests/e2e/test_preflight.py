"""A `RIME_API_URL` nothing answers at fails `render`, `resume` and `submit` in a few quick tries
with one line naming it, before any job is recorded, started or sent."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.preflight import PROBE_POLICY
from rime_local.server import RunningEngine
from tests.e2e.test_render import KEY, prompts, write
from tests.fixtures.cli import Cli, CliResult
from tests.fixtures.services import closed_port

EngineFactory = Callable[..., RunningEngine]
TRIES = re.compile(r"preflight of .*, try (\d) of (\d): no answer")


@pytest.fixture
def refused(cli: Cli) -> Iterator[tuple[Cli, str]]:
    """`cli` pointed at a Rime URL on a port that refuses connections; the URL."""
    with closed_port() as port:
        url = f"http://127.0.0.1:{port}/v1/rime-tts"
        yield cli.using(api_key=KEY, RIME_API_URL=url), url


def failed_in_a_few_tries(result: CliResult, url: str) -> None:
    """Exit 1, no traceback, one line naming `url`, one warning a try and no more tries."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.output
    naming = [line for line in result.stderr.splitlines() if url in line]
    assert len(naming) == 1, result
    assert naming[0].startswith(f"error: cannot reach Rime at {url}: "), result
    assert naming[0].endswith(f"({PROBE_POLICY.max_attempts} tries)"), result
    tries = [m.groups() for m in map(TRIES.search, result.stderr.splitlines()) if m]
    total = str(PROBE_POLICY.max_attempts)
    assert tries == [(str(n), total) for n in range(1, PROBE_POLICY.max_attempts + 1)], result
    others = [line for line in result.stderr.splitlines() if line not in naming]
    assert len(others) == len(tries), result  # nothing else: no retries of segments


def test_render_against_a_refused_port_fails_in_a_few_tries(
    cli: Cli, refused: tuple[Cli, str], tmp_path: Path
) -> None:
    run, url = refused
    write(tmp_path, prompts(30))

    result = run.run("render", "jobs.yaml")

    failed_in_a_few_tries(result, url)
    assert "prompts" not in cli.run("status").stdout  # no job recorded


def test_resume_against_a_refused_port_leaves_the_job_pending_for_a_good_url(
    cli: Cli, refused: tuple[Cli, str], engine_factory: EngineFactory, tmp_path: Path
) -> None:
    write(tmp_path, prompts(3))
    saved = cli.run("plan", "jobs.yaml", "--save")
    assert saved.returncode == 0, saved
    found = re.search(r"saved as job ([0-9a-f]{12})", saved.stdout)
    assert found, saved
    job_id = found.group(1)
    run, url = refused

    failed_in_a_few_tries(run.run("resume", job_id), url)

    assert re.search(rf"{job_id}\s.*pending", cli.run("status").stdout)
    engine = engine_factory(api_keys=[KEY])
    resumed = cli.using(engine=engine, api_key=KEY).run("resume", job_id)
    assert resumed.returncode == 0, resumed
    assert engine.metrics()["completed"] == 3 + 1  # the prompts and the preflight


def test_submit_against_a_refused_port_records_and_sends_nothing(
    cli: Cli, refused: tuple[Cli, str], redis_url: str, tmp_path: Path
) -> None:
    run, url = refused
    write(tmp_path, prompts(3))

    result = run.using(CELERY_BROKER_URL=redis_url).run("submit", "jobs.yaml")

    assert result.stdout == ""  # no job id
    failed_in_a_few_tries(result, url)
    assert "prompts" not in cli.run("status").stdout
