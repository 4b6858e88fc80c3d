"""`rime-batch render` against an account whose limit is lower than the concurrency asked for:
the job still finishes, only slower. The adaptive cap is the default, and a 429 does not use up
the attempts meant for real failures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rime_local.server import RunningEngine
from tests.e2e.test_render import by_id, results_of, write
from tests.fixtures.cli import Cli

EngineFactory = Callable[..., RunningEngine]
KEY = "rk-e2e-limits-8c41d2e07b"
SCRIPTS = 24


def prompts(count: int) -> str:
    lines = ["job: over-the-limit", "output: out", "defaults:", "  speaker: cove", "scripts:"]
    for i in range(count):
        lines += [f"  - id: p{i:02d}", f"    text: Prompt {i} asks the caller to hold the line."]
    return "\n".join(lines) + "\n"


def test_a_cap_above_the_accounts_limit_still_finishes_every_script(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    # Each generation takes a while, so requests overlap and the account's cap of 2 is hit.
    engine = engine_factory(api_keys=[KEY], concurrency_per_key=2, ttfb_ms=150)
    # One attempt per segment: had a 429 counted as a failed attempt, its script would fail.
    run = cli.using(engine=engine, api_key=KEY, RIME_BATCH_RETRY_MAX_ATTEMPTS="1")
    write(tmp_path, prompts(SCRIPTS))

    result = run.run("render", "jobs.yaml", "--concurrency", "6")

    assert result.returncode == 0, result
    metrics = engine.metrics()
    assert metrics["rejected_429"] >= 1, metrics  # the account did push back
    # ... and the cap came down to its limit: a fixed cap of 6 meets about two 429s a script.
    assert metrics["rejected_429"] <= SCRIPTS // 4, metrics
    assert metrics["peak_in_flight"] <= 2
    assert metrics["completed"] == SCRIPTS + 1  # and the preflight
    results = results_of(tmp_path / "out")
    assert results["state"] == "done"
    scripts = by_id(results)
    assert [s["state"] for s in scripts.values()] == ["done"] * SCRIPTS
    # Every request the engine saw is an attempt in the table: the 429s are not hidden.
    assert sum(s["attempts"] for s in scripts.values()) == metrics["requests"]
