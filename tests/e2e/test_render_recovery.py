"""Renders that meet a damaged cache or an unusable destination: one clear outcome, no traceback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pipeline.preflight import PROBE_TEXT
from rime_local.server import RunningEngine
from tests.fixtures.cli import Cli

KEY = "rk-e2e-recovery-5d1e9a"
MANIFEST = """\
output: out
defaults: {formats: [wav]}
scripts:
  - id: hello
    text: "Hello there. This is a short prompt."
"""


def _engine(factory: Callable[..., RunningEngine]) -> RunningEngine:
    return factory(api_keys=[KEY])


def test_a_damaged_cache_entry_is_synthesized_again(
    cli: Cli, engine_factory: Callable[..., RunningEngine], tmp_path: Path
) -> None:
    engine = _engine(engine_factory)
    run = cli.using(engine=engine, api_key=KEY)
    (tmp_path / "jobs.yaml").write_text(MANIFEST)
    assert run.run("render", "jobs.yaml").returncode == 0
    [entry] = list((tmp_path / "out" / "cache").rglob("*.wav"))
    entry.write_bytes(b"not a wav file at all")
    engine.reset_metrics()

    again = run.run("render", "jobs.yaml")

    assert again.returncode == 0, again
    assert "Traceback" not in again.stderr
    # No preflight: the entry is there, and only the stage finds out it is damaged.
    assert engine.metrics()["requests"] == 1
    assert entry.read_bytes()[:4] == b"RIFF"
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["state"] == "done"


def test_a_destination_that_cannot_be_written_fails_before_any_request(
    cli: Cli, engine_factory: Callable[..., RunningEngine], tmp_path: Path
) -> None:
    engine = _engine(engine_factory)
    run = cli.using(engine=engine, api_key=KEY)
    (tmp_path / "jobs.yaml").write_text(MANIFEST)
    (tmp_path / "taken").write_text("a file where the output folder should be")

    # A destination held by a file is bad input, found by plan as by render.
    for command in ("plan", "render"):
        result = run.run(command, "jobs.yaml", "-o", str(tmp_path / "taken"))

        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        assert f"output (override): {str(tmp_path / 'taken')!r} is a file" in result.stderr
    assert engine.metrics()["requests"] == 0


def test_an_id_under_the_cache_folder_is_refused(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text(MANIFEST.replace("id: hello", "id: cache/ab/x"))

    result = cli.run("plan", "jobs.yaml")

    assert result.returncode == 2
    assert "jobs.yaml:4: scripts[0].id:" in result.stderr
    assert "reserved" in result.stderr


def test_local_engine_audio_is_never_reused_for_rime(
    cli: Cli, engine_factory: Callable[..., RunningEngine], tmp_path: Path
) -> None:
    (tmp_path / "jobs.yaml").write_text(MANIFEST)
    local = cli.run("render", "jobs.yaml")
    assert local.returncode == 0, local
    assert "local engine" in local.stderr

    engine = _engine(engine_factory)
    keyed = cli.using(engine=engine, api_key=KEY).run("render", "jobs.yaml")

    assert keyed.returncode == 0, keyed
    assert engine.metrics()["requests"] == 1 + 1  # and the preflight of its voice
    assert len(list((tmp_path / "out" / "cache").rglob("*.wav"))) == 2


def test_audio_far_too_long_for_its_text_is_rejected_billed_and_recorded(
    cli: Cli, engine_factory: Callable[..., RunningEngine], tmp_path: Path
) -> None:
    # Whole, well-formed audio, but tens of seconds of it for a short sentence.
    engine = engine_factory(api_keys=[KEY], fault_implausible_rate=1.0)
    run = cli.using(
        engine=engine,
        api_key=KEY,
        RIME_BATCH_RETRY_MAX_ATTEMPTS="2",
        RIME_BATCH_RETRY_INITIAL_WAIT="0",
        RIME_BATCH_RETRY_JITTER="0",
    )
    (tmp_path / "jobs.yaml").write_text(MANIFEST)

    result = run.run("render", "jobs.yaml")

    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    metrics = engine.metrics()
    # The preflight's one character too: its audio is not checked for plausibility.
    assert (metrics["requests"], metrics["faults"]) == (1 + 2, {"implausible": 1 + 2})
    # Failed, so not published: the job's results are in its release folder.
    assert not (tmp_path / "out" / "results.json").exists()
    (release,) = (tmp_path / "out" / "releases").iterdir()
    results = json.loads((release / "results.json").read_text())
    [script] = results["scripts"]
    chars = len("Hello there. This is a short prompt.")
    assert (script["state"], script["attempts"], script["outputs"]) == ("failed", 1 + 2, [])
    assert "s of audio for 36 characters" in script["error"], script["error"]
    # Generated, so paid for, both times, though none of it could be used.
    assert script["billed_chars"] == metrics["billed_characters"] == 2 * chars + len(PROBE_TEXT)
    assert not list((tmp_path / "out").rglob("*.wav")), "rejected audio was cached or stitched"
