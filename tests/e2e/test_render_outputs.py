"""What a render delivers, looked at closely: exact pauses in the audio, and objects on S3."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

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
