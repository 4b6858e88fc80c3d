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

from pipeline.preflight import PROBE_TEXT
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
# One voice (cove on mistv2): the preflight sends one request of PROBE_TEXT, counted as an
# attempt of the first script's segment.
PROBED = "ivr/welcome"
PROBE_CHARS = len(PROBE_TEXT)
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
    # Published: each output at its stable path, the same bytes as in the job's release.
    listed = {Path(o["published_uri"]) for s in scripts.values() for o in s["outputs"]}
    assert listed == {(tmp_path / rel).resolve() for rel in EXPECTED_OUTPUTS}
    release = (tmp_path / "out" / "releases" / job_id).resolve()
    for output in (o for s in scripts.values() for o in s["outputs"]):
        assert Path(output["uri"]).is_relative_to(release), output
        assert Path(output["uri"]).read_bytes() == Path(output["published_uri"]).read_bytes()

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
        probed = script["id"] == PROBED
        assert script["billed_chars"] == script["chars"] + probed * PROBE_CHARS > 0
        segments = NARRATION_SEGMENTS if "narration" in script["id"] else 1
        assert script["attempts"] == segments + probed
    assert results["chars"] == sum(s["chars"] for s in scripts.values())
    assert results["billed_chars"] == results["chars"] + PROBE_CHARS
    metrics = engine.metrics()
    assert metrics["completed"] == metrics["requests"] == 2 + NARRATION_SEGMENTS + 1
    assert metrics["characters"] == results["chars"] + PROBE_CHARS

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
    assert engine.metrics()["requests"] == 2 + NARRATION_SEGMENTS + 1
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
    assert metrics["requests"] == 1 + 1  # the preflight, then the edited sentence
    assert metrics["characters"] == len(edited_sentence) + PROBE_CHARS
    after = {rel: sha256_of(tmp_path / rel) for rel in EXPECTED_OUTPUTS}
    changed = {rel for rel in EXPECTED_OUTPUTS if after[rel] != before[rel]}
    assert changed == {"out/narration/chapter.mp3", "out/narration/chapter.wav"}
    assert results_of(tmp_path / "out")["billed_chars"] == len(edited_sentence) + PROBE_CHARS


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
    assert segments == 12 + 2 + NARRATION_SEGMENTS + 1  # and the preflight's
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


def test_a_refused_key_fails_in_one_line_before_any_segment_and_is_never_written(
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
    # The preflight's one request, refused; no segment was sent, and nothing was billed.
    metrics = engine.metrics()
    assert metrics["requests"] == metrics["rejected_401"] == 1
    assert metrics["characters"] == 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result
    assert lines[0].startswith(f"error: Rime at {engine.http_url} refused the API key"), result
    assert "HTTP 401" in lines[0]
    # The server's message, cut, with the key taken out before the cut.
    assert "[redact" in lines[0], result
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    listed = run.run("status")
    assert "prompts" not in listed.stdout  # no job was recorded
    places = {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "database": database_text(database_url),
        "files": folder_bytes(tmp_path).decode("latin-1"),
    }
    assert_no_piece_of(wrong, places)
    assert_no_piece_of(KEY, places)

    # With the right key the same manifest renders, nothing of the refusal is counted, and the
    # key it was given appears nowhere either.
    engine.reset_metrics()
    fixed = cli.using(engine=engine, api_key=KEY, database_url=database_url).run("render", manifest)
    assert fixed.returncode == 0, fixed
    assert engine.metrics()["completed"] == 10 + 1
    results = results_of(tmp_path / "out")
    assert results["state"] == "done"
    assert results["billed_chars"] == results["chars"] + PROBE_CHARS
    assert_no_piece_of(KEY, places_a_key_could_leak(fixed, database_url, tmp_path))


def test_an_unknown_speaker_stops_the_render_before_any_segment_is_sent(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    write(tmp_path, prompts(4, speaker_of=lambda i: "nobody" if i in (1, 3) else "cove"))

    result = run.run("render", "jobs.yaml")

    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result
    # The manifest's field, the scripts it concerns and the server's own words.
    assert "jobs.yaml: scripts[1].speaker ('prompt-01' and 1 more)" in lines[0], result
    assert "unknown speaker 'nobody'" in lines[0]
    # One preflight request per voice, in manifest order: cove passed, nobody was refused.
    metrics = engine.metrics()
    assert metrics["requests"] == 2
    assert metrics["rejected_400"] == 1
    assert metrics["characters"] == PROBE_CHARS  # no segment: only cove's one character
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
