"""What a render delivers, looked at closely: exact pauses in the audio, objects on S3, and
what each output measures."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.audio import ffmpeg_exe, parse_ebur128_summary
from pipeline.loudness import Loudness
from pipeline.storage import OUTPUT_EXTENSIONS
from rime_local.server import RunningEngine
from tests.e2e.test_render import KEY, results_of, write
from tests.fixtures.cli import Cli, probe
from tests.fixtures.s3 import S3Env

EngineFactory = Callable[..., RunningEngine]

# The stitcher's definition of silence: below -50 dBFS, as a 16-bit sample value.
SILENCE = 10 ** (-50 / 20) * 32768

PAUSES = """\
job: pauses
output: out
scripts:
  - id: announcement
    speaker: cove
    samplingRate: 24000
    formats: [wav]
    pauses_as_cuts: true
    text: >-
      Welcome to the Riverside clinic. <700> Please choose from the following
      options. <1200> Thank you for waiting.
"""


def silent_runs(samples: np.ndarray, rate: int, longer_than: float) -> list[float]:
    """Lengths in seconds of the runs of silence between speech longer than `longer_than`."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) >= SILENCE)
    gaps = np.diff(loud) - 1  # silent samples between consecutive loud ones
    return [g / rate for g in gaps if g / rate > longer_than]


def test_pause_markup_becomes_exact_silence(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    write(tmp_path, PAUSES)

    result = cli.using(engine=engine, api_key=KEY).run("render", "jobs.yaml")

    assert result.returncode == 0, result
    assert engine.metrics()["requests"] == 3 + 1  # each pause is a cut; and the preflight
    audio = probe(tmp_path / "out" / "announcement.wav")
    assert (audio.codec, audio.sample_rate) == ("pcm_s16le", 24000)
    # espeak's own gaps between words and sentences are far shorter than the markup's.
    gaps = silent_runs(audio.samples, audio.sample_rate, longer_than=0.45)
    assert gaps == [pytest.approx(0.7, abs=0.01), pytest.approx(1.2, abs=0.01)]


def test_s3_destination_gets_objects_with_type_and_metadata(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path, s3: S3Env, s3_bucket: str
) -> None:
    engine = engine_factory(api_keys=[KEY])
    write(tmp_path, PAUSES.replace("formats: [wav]", "formats: [wav, mp3]"))
    destination = s3.uri(s3_bucket, "renders/april")

    result = cli.using(engine=engine, api_key=KEY).run("render", "jobs.yaml", "-o", destination)

    assert result.returncode == 0, result
    assert not (tmp_path / "out").exists()
    listed = s3.client.list_objects_v2(Bucket=s3_bucket, Prefix="renders/april/")
    keys = {o["Key"] for o in listed.get("Contents", [])}
    outputs = {"renders/april/announcement.wav", "renders/april/announcement.mp3"}
    assert outputs | {"renders/april/results.json"} <= keys
    job_id = json.loads(
        s3.client.get_object(Bucket=s3_bucket, Key="renders/april/results.json")["Body"].read()
    )["job_id"]
    released = {k.replace("april/", f"april/releases/{job_id}/") for k in outputs}
    assert released <= keys
    # The segment cache lives with the outputs, so a second machine rendering there reuses it.
    assert sum(k.startswith("renders/april/cache/") for k in keys) == 3

    results_obj = s3.client.get_object(Bucket=s3_bucket, Key="renders/april/results.json")
    assert results_obj["ContentType"] == "application/json"
    results = json.loads(results_obj["Body"].read())
    assert results["state"] == "done"
    assert results["destination"] == destination
    (script,) = results["scripts"]
    assert {o["uri"] for o in script["outputs"]} == {f"s3://{s3_bucket}/{k}" for k in released}
    assert {o["published_uri"] for o in script["outputs"]} == {
        f"s3://{s3_bucket}/{key}" for key in outputs
    }
    sha_by_uri = {o["published_uri"]: o["sha256"] for o in script["outputs"]}

    for key, content_type in [
        ("renders/april/announcement.wav", "audio/wav"),
        ("renders/april/announcement.mp3", "audio/mpeg"),
    ]:
        obj = s3.client.get_object(Bucket=s3_bucket, Key=key)
        body = obj["Body"].read()
        assert obj["ContentType"] == content_type
        meta = obj["Metadata"]
        assert meta["job-id"] == results["job_id"]
        assert (meta["speaker"], meta["model"]) == ("cove", "mistv2")
        assert (
            meta["sha256"]
            == hashlib.sha256(body).hexdigest()
            == sha_by_uri[f"s3://{s3_bucket}/{key}"]
        )
        local = tmp_path / Path(key).name
        local.write_bytes(body)
        decoded = probe(local).seconds
        assert float(meta["duration-s"]) == pytest.approx(decoded, abs=0.06), key
        assert float(meta["duration-s"]) == pytest.approx(script["audio_seconds"], abs=0.01)


def test_local_results_match_what_status_reports(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    write(tmp_path, PAUSES)
    run = cli.using(engine=engine, api_key=KEY)
    assert run.run("render", "jobs.yaml").returncode == 0
    results = results_of(tmp_path / "out")

    status = run.run("status", results["job_id"])

    assert status.returncode == 0, status
    (script,) = results["scripts"]
    assert f"{script['audio_seconds']:.2f}s" in status.stdout
    assert f"{script['chars']:,}" in status.stdout


LEVELED = """\
job: leveled
output: out
scripts:
  - id: narration
    speaker: cove
    samplingRate: 22050
    formats: [wav, mp3, wav-mulaw]
    loudness_lufs: -16
    text: >-
      It is a truth universally acknowledged, that a single man in possession of a good
      fortune, must be in want of a wife. Popular, peppery, punchy: the plosives pop!
"""


def test_every_output_lists_what_it_measures_in_results_and_status(
    cli: Cli, tmp_path: Path
) -> None:
    write(tmp_path, LEVELED)
    rendered = cli.run("render", "jobs.yaml")
    assert rendered.returncode == 0, rendered
    results = results_of(tmp_path / "out")
    (script,) = results["scripts"]
    listed = {o["format"]: o["loudness"] for o in script["outputs"]}
    assert sorted(listed) == ["mp3", "wav", "wav-mulaw"]
    for fmt, loudness in listed.items():
        own = loudness_of_file(tmp_path / "out" / f"narration{OUTPUT_EXTENSIONS[fmt]}")
        assert loudness == {
            "integrated_lufs": pytest.approx(own.integrated_lufs, abs=0.1),
            "true_peak_dbtp": pytest.approx(own.true_peak_dbtp, abs=0.1),
            "range_lu": pytest.approx(own.range_lu, abs=0.1),
        }, fmt
    assert listed["mp3"] != listed["wav"]
    # The script's own figures are its farthest output's, named.
    farthest = script["loudness"]["format"]
    assert script["loudness"]["integrated_lufs"] == listed[farthest]["integrated_lufs"]
    assert script["warnings"] == []

    status = cli.run("status", results["job_id"])
    assert status.returncode == 0, status
    # Outputs that measure alike share a line; each differing one has its own, by name.
    for fmt, loudness in listed.items():
        figures = f"{loudness['integrated_lufs']:.1f} LUFS LRA {loudness['range_lu']:.1f}"
        line = next(line for line in status.stdout.splitlines() if f" {fmt}" in line)
        assert figures in line, status.stdout
    assert re.search(r"\((limited|gain) [+-]\d+\.\d dB\)", status.stdout), status.stdout


def loudness_of_file(path: Path) -> Loudness:
    """What ffmpeg, run here, measures a file to be."""
    cmd = [ffmpeg_exe(), "-nostats", "-i", str(path), "-af", "ebur128=peak=true", "-f", "null"]
    log = subprocess.run([*cmd, "-"], capture_output=True, text=True, check=True).stderr
    return parse_ebur128_summary(log)
