"""`rime-batch render` end to end: a real subprocess, a real engine on loopback, real ffmpeg.

Each test writes a small manifest into its own folder, runs the command the way a user does
and checks what it left behind: audio files as ffmpeg decodes them, results.json, the job table
and the engine's own request counters.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.rime.errors import MAX_MESSAGE_CHARS
from pipeline.store import create_engine_for
from rime_local.server import RunningEngine
from tests.fixtures.cli import Cli, CliResult, probe
from tests.fixtures.leaks import assert_no_piece_of, database_text, folder_bytes
from tests.fixtures.placement import assert_segments_in_order, script_layout

KEY = "rk-e2e-3f9c1d7a5b2e4c60"

IVR_AND_NARRATION = """\
job: clinic
output: out
defaults:
  speaker: cove
  modelId: mistv2
  samplingRate: 8000
  formats: [wav-mulaw]
scripts:
  - id: ivr/welcome
    text: Thank you for calling Riverside Clinic. <300> Please listen closely.
  - id: ivr/menu
    text: For appointments, press 1. For billing, press 2.
  - id: narration/chapter
    samplingRate: 22050
    formats: [mp3, wav]
    max_chars: 40
    paragraph_pause_ms: 600
    text: |
      The rain had stopped by noon. The street was quiet again.

      Anna opened the window wide. A cold breeze filled the room.

      She picked up the old letter. Then she began to read it aloud.
"""

# (codec, sampling rate) that ffmpeg must find in each output of IVR_AND_NARRATION.
EXPECTED_OUTPUTS = {
    "out/ivr/welcome.mulaw.wav": ("pcm_mulaw", 8000),
    "out/ivr/menu.mulaw.wav": ("pcm_mulaw", 8000),
    "out/narration/chapter.mp3": ("mp3", 22050),
    "out/narration/chapter.wav": ("pcm_s16le", 22050),
}
NARRATION_SEGMENTS = 6  # two sentences a paragraph, each its own segment under max_chars 40
# Outputs whose segments are located one by one: (script, file, tolerance). PCM is copied sample
# for sample; MP3 changes the waveform a little and could move it by a few samples.
LOSSY: dict[str, float] = {"tolerance_ms": 2.0, "min_score": 0.9}
ORDER_CHECKS: list[tuple[str, str, dict[str, float]]] = [
    ("narration/chapter", "out/narration/chapter.wav", {}),
    ("narration/chapter", "out/narration/chapter.mp3", LOSSY),
]

EngineFactory = Callable[..., RunningEngine]


def write(folder: Path, text: str, name: str = "jobs.yaml") -> Path:
    """Write a manifest (or any file) into the test's folder."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def job_id_of(result: CliResult) -> str:
    """The job id a render announces on stderr."""
    found = re.search(r"job ([0-9a-f]{12}):", result.stderr)
    assert found, f"no job id announced\n{result}"
    return found.group(1)


def results_of(folder: Path) -> dict[str, Any]:
    """The job's results.json."""
    document: dict[str, Any] = json.loads((folder / "results.json").read_text())
    return document


def by_id(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """results.json's scripts keyed by script id."""
    return {s["id"]: s for s in results["scripts"]}


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def segment_rows(database_url: str, job_id: str) -> list[dict[str, Any]]:
    """Every segment row of a job, as the job table holds it."""
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT id, script_pk, state, attempts, billed_chars, chars, cache_key "
                    "FROM segments WHERE job_id = :job ORDER BY id"
                ),
                {"job": job_id},
            ).mappings()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def test_render_writes_every_output_and_its_results(
    cli: Cli, database_url: str, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY, database_url=database_url)
    write(tmp_path, IVR_AND_NARRATION)

    result = run.run("render", "jobs.yaml")

    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    job_id = job_id_of(result)
    results = results_of(tmp_path / "out")
    assert results["job_id"] == job_id
    assert results["state"] == "done"
    scripts = by_id(results)
    assert list(scripts) == ["ivr/welcome", "ivr/menu", "narration/chapter"]
    listed = {Path(o["uri"]) for s in scripts.values() for o in s["outputs"]}
    assert listed == {(tmp_path / rel).resolve() for rel in EXPECTED_OUTPUTS}

    for rel, (codec, rate) in EXPECTED_OUTPUTS.items():
        audio = probe(tmp_path / rel)
        script = scripts[rel.removeprefix("out/").split(".")[0]]
        assert (audio.codec, audio.sample_rate, audio.channels) == (codec, rate, 1), rel
        # mp3 frames round the decoded length up by at most one frame (1152 samples).
        assert audio.seconds == pytest.approx(script["audio_seconds"], abs=0.06), rel
        # Speech runs 5 to 30 characters a second; the pauses add a little more.
        assert script["chars"] / 30 < audio.seconds < script["chars"] / 5 + 2.5, rel

    for script_id, rel, tolerance in ORDER_CHECKS:
        layout = script_layout(database_url, job_id, script_id)
        assert_segments_in_order(tmp_path / rel, layout, tmp_path / "out", **tolerance)

    for script in scripts.values():
        assert script["state"] == "done"
        assert script["error"] is None
        for output in script["outputs"]:
            path = Path(output["uri"])
            assert output["sha256"] == sha256_of(path)
            assert output["bytes"] == path.stat().st_size
        assert script["billed_chars"] == script["chars"] > 0
        assert script["attempts"] == (NARRATION_SEGMENTS if "narration" in script["id"] else 1)
    assert results["chars"] == sum(s["chars"] for s in scripts.values())
    assert results["billed_chars"] == results["chars"]
    metrics = engine.metrics()
    assert metrics["completed"] == metrics["requests"] == 2 + NARRATION_SEGMENTS
    assert metrics["characters"] == results["chars"]

    one = run.run("status", job_id[:6])
    assert one.returncode == 0, one
    assert f"job {job_id}" in one.stdout
    assert all(re.search(rf"{re.escape(s)}\s.*done", one.stdout) for s in scripts), one
    every = run.run("status")
    assert every.returncode == 0, every
    assert re.search(rf"{job_id}\s.*clinic\s.*done\s.*3/3", every.stdout), every


def test_unchanged_manifest_is_never_synthesized_twice(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    manifest = write(tmp_path, IVR_AND_NARRATION)
    first = run.run("render", manifest)
    assert first.returncode == 0, first
    assert engine.metrics()["requests"] == 2 + NARRATION_SEGMENTS
    before = {rel: sha256_of(tmp_path / rel) for rel in EXPECTED_OUTPUTS}

    engine.reset_metrics()
    again = run.run("render", manifest)

    assert again.returncode == 0, again
    assert engine.metrics()["requests"] == 0
    assert {rel: sha256_of(tmp_path / rel) for rel in EXPECTED_OUTPUTS} == before
    results = results_of(tmp_path / "out")
    assert results["job_id"] == job_id_of(again) != job_id_of(first)
    assert results["billed_chars"] == 0 < results["chars"]

    edited_sentence = "A warm breeze filled the room."
    manifest.write_text(
        IVR_AND_NARRATION.replace("A cold breeze filled the room.", edited_sentence)
    )
    engine.reset_metrics()
    edited = run.run("render", manifest)

    assert edited.returncode == 0, edited
    metrics = engine.metrics()
    assert metrics["requests"] == 1
    assert metrics["characters"] == len(edited_sentence)
    after = {rel: sha256_of(tmp_path / rel) for rel in EXPECTED_OUTPUTS}
    changed = {rel for rel in EXPECTED_OUTPUTS if after[rel] != before[rel]}
    assert changed == {"out/narration/chapter.mp3", "out/narration/chapter.wav"}
    assert results_of(tmp_path / "out")["billed_chars"] == len(edited_sentence)


def prompts(count: int, *, speaker_of: Callable[[int], str] = lambda _: "cove") -> str:
    """A manifest of `count` one-segment IVR prompts with distinct texts."""
    lines = [
        "job: prompts",
        "output: out",
        "defaults: {modelId: mistv2, samplingRate: 8000, formats: [wav-mulaw]}",
        "scripts:",
    ]
    for i in range(count):
        lines.append(f"  - id: prompt-{i:02d}")
        lines.append(f"    speaker: {speaker_of(i)}")
        lines.append(f"    text: For option number {i + 1}, please press {i % 10} now.")
    return "\n".join(lines) + "\n"


def test_faults_are_retried_into_the_same_audio(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    manifest = write(tmp_path, prompts(12) + IVR_AND_NARRATION.split("scripts:\n", 1)[1])
    # The reference: the same manifest, no faults, its own output folder and so its own cache.
    reference = run.run("render", manifest, "--output", "reference")
    assert reference.returncode == 0, reference
    segments = engine.metrics()["requests"]
    assert segments == 12 + 2 + NARRATION_SEGMENTS
    assert results_of(tmp_path / "reference")["billed_chars"] == engine.metrics()["characters"]

    engine.configure(fault_seed=3, fault_error_rate=0.1, fault_cut_rate=0.05, burst_429=4)
    engine.reset_metrics()
    faulty = run.run("render", manifest, "--output", "faulty")

    assert faulty.returncode == 0, faulty
    metrics = engine.metrics()
    assert metrics["rejected_429"] == 4
    assert metrics["faults"].get("cut", 0) > 0
    assert sum(n for kind, n in metrics["faults"].items() if kind.startswith("http_5")) > 0
    results = results_of(tmp_path / "faulty")
    assert results["state"] == "done"
    assert sum(s["attempts"] for s in results["scripts"]) == metrics["requests"] > segments
    # Billed: every request whose audio had started, cut or not, as the engine counted them;
    # a 5xx or a 429 generated nothing. More than the text, by the cut streams.
    assert results["billed_chars"] == metrics["billed_characters"]
    assert metrics["billed_characters"] > metrics["characters"] == results["chars"]
    expected = by_id(results_of(tmp_path / "reference"))
    job_id = job_id_of(faulty)
    for script in results["scripts"]:
        assert len(script["outputs"]) == len(expected[script["id"]]["outputs"])
        layout = script_layout(run.database_url, job_id, script["id"])
        for output in script["outputs"]:
            # Every segment once, in its place: none lost to a fault, none stitched twice.
            lossy = {} if output["format"] == "wav" else LOSSY
            assert_segments_in_order(Path(output["uri"]), layout, tmp_path / "faulty", **lossy)


# Where the refusal puts the wrong key: across the cut of a long server message (300 characters).
ECHO_AT = MAX_MESSAGE_CHARS - 10


def places_a_key_could_leak(result: CliResult, database_url: str, folder: Path) -> dict[str, str]:
    """The command's output (its logs are on stderr), every row of the job table, and every
    file the job left (results.json, outputs, cache, the SQLite file)."""
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "database": database_text(database_url),
        "results.json": (folder / "out" / "results.json").read_text(),
        "files": folder_bytes(folder).decode("latin-1"),
    }


def test_a_refused_key_fails_fast_once_and_is_never_written(
    cli: Cli, database_url: str, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    wrong = "rk-wrong-8d0e2b6f41c7a953"
    # The engine echoes the refused key in its 401 message, as some gateways do.
    engine = engine_factory(api_keys=[KEY], echo_refused_key_at=ECHO_AT)
    run = cli.using(engine=engine, api_key=wrong, database_url=database_url)
    manifest = write(tmp_path, prompts(10))

    result = run.run("render", manifest, "--concurrency", "2")

    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    # Far under the retry policy's minutes: nothing is retried, and after the first refusal
    # no other request goes out: at most the one each executor worker (twice the
    # concurrency) had under way, where trying every segment would send ten.
    metrics = engine.metrics()
    assert 1 <= metrics["rejected_401"] == metrics["requests"] <= 4
    told = [line for line in result.stderr.splitlines() if "API key" in line]
    assert len(told) == 1, result
    assert "HTTP 401" in told[0]
    results = results_of(tmp_path / "out")
    assert results["state"] == "failed"
    assert {s["state"] for s in results["scripts"]} == {"failed"}
    # One attempt at most for any segment; one cut short by the refusal is not counted.
    assert max(s["attempts"] for s in results["scripts"]) == 1
    assert 1 <= sum(s["attempts"] for s in results["scripts"]) <= metrics["requests"]
    assert not list((tmp_path / "out").glob("prompt-*"))
    places = places_a_key_could_leak(result, database_url, tmp_path)
    assert_no_piece_of(wrong, places)
    assert_no_piece_of(KEY, places)
    # The server's message reached the results, cut, with the key taken out before the cut.
    assert any("[redact" in (s["error"] or "") for s in results["scripts"]), results

    # With the right key the same job finishes, sending only what was never rendered, and the
    # key it was given appears nowhere either.
    engine.reset_metrics()
    resumed = cli.using(engine=engine, api_key=KEY, database_url=database_url).run(
        "resume", results["job_id"]
    )
    assert resumed.returncode == 0, resumed
    assert engine.metrics()["completed"] == 10
    assert results_of(tmp_path / "out")["state"] == "done"
    assert_no_piece_of(KEY, places_a_key_could_leak(resumed, database_url, tmp_path))


def test_a_bad_request_fails_only_its_script(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    write(tmp_path, prompts(4, speaker_of=lambda i: "nobody" if i == 1 else "cove"))

    result = run.run("render", "jobs.yaml")

    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    scripts = by_id(results_of(tmp_path / "out"))
    bad = scripts.pop("prompt-01")
    assert bad["state"] == "failed"
    assert bad["attempts"] == 1
    assert bad["outputs"] == []
    # The server's own words, carried through to the results and the terminal.
    assert "unknown speaker 'nobody'" in bad["error"]
    assert "unknown speaker 'nobody'" in result.stderr
    assert not (tmp_path / "out" / "prompt-01.mulaw.wav").exists()
    for script in scripts.values():
        assert script["state"] == "done", script
        assert probe(Path(script["outputs"][0]["uri"])).codec == "pcm_mulaw"
    assert engine.metrics()["rejected_400"] == 1
