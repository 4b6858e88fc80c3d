"""Captions of a real render: cue starts against the words in the final audio, the cache, and
captions as outputs of the release.

Where a word starts in the final file is found without our timeline: each cue's sentence is
synthesized again on its own over HTTP (the local engine speaks a sentence the same samples
alone as inside a text), and its first quarter second of speech is located in the decoded
output by normalized cross-correlation over the whole file. A cue must start within 30 ms of
that place; a timeline that forgot the lead pause, a pause, a trim or a keep would miss it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from rime_local.server import RunningEngine
from tests.e2e.test_render import write
from tests.fixtures.cli import Cli, probe
from tests.fixtures.s3 import S3Env

RATE = 22050
SILENCE = 10 ** (-50 / 20) * 32768
TOLERANCE = 0.030
SENTENCES = [
    "The river runs to the sea past the old mill and the quiet town.",
    "Roads join the hills to the valleys and the farms beyond them.",
    "Every morning the baker opens the shop before the sun is up.",
    "Children walk to school along the canal in the rain.",
]
# A lead pause, two pauses that cut segments, and two sentences inside one segment: the third
# sentence's cue starts in the middle of its segment's audio.
TEXT = f"<500> {SENTENCES[0]} <800> {SENTENCES[1]} {SENTENCES[2]} <1200> {SENTENCES[3]}"


def manifest(folder: Path, *, captions: bool = True, job: str = "lessons") -> Path:
    lines = [
        f"job: {job}",
        "output: out",
        "scripts:",
        "  - id: course/lesson-1",
        "    speaker: cove",
        f"    samplingRate: {RATE}",
        "    formats: [wav, mp3]",
        "    pauses_as_cuts: true",
        f"    text: {json.dumps(TEXT)}",
    ]
    if captions:
        lines.append("    captions: [srt, vtt]")
    return write(folder, "\n".join(lines) + "\n")


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """(start, end, text) of every cue of a SubRip file."""
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        assert lines[0].isdigit(), block
        times = re.fullmatch(r"(\S+) --> (\S+)", lines[1])
        assert times is not None, block
        cues.append((_clock(times[1]), _clock(times[2]), " ".join(lines[2:])))
    return cues


def _clock(value: str) -> float:
    hours, minutes, rest = value.replace(",", ".").split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)


def spoken_alone(engine: RunningEngine, text: str) -> NDArray[np.float64]:
    """The engine's speech of `text` on its own, from its first loud sample."""
    response = httpx.post(
        engine.http_url,
        json={"text": text, "speaker": "cove", "modelId": "mistv2", "samplingRate": RATE},
        headers={"Accept": "audio/pcm"},
        timeout=60,
    )
    response.raise_for_status()
    samples = np.frombuffer(response.content, dtype="<i2").astype(np.float64)
    return samples[np.flatnonzero(np.abs(samples) >= SILENCE)[0] :]


def locate(programme: NDArray[np.float64], template: NDArray[np.float64]) -> tuple[float, float]:
    """Where `template` best matches in `programme` (seconds) and how well (correlation, 0..1)."""
    n = 1 << int(np.ceil(np.log2(len(programme) + len(template))))
    correlation = np.fft.irfft(np.fft.rfft(programme, n) * np.conj(np.fft.rfft(template, n)), n)
    valid = len(programme) - len(template) + 1
    energy = np.concatenate([[0.0], np.cumsum(programme**2)])
    window = np.sqrt(energy[len(template) : len(template) + valid] - energy[:valid])
    norm = np.linalg.norm(template)
    # Over silence both are nothing but rounding noise: no match there.
    audible = window > 0.01 * norm
    score = np.where(audible, correlation[:valid] / np.maximum(window * norm, 1e-9), 0.0)
    best = int(np.argmax(score))
    return best / RATE, float(score[best])


def caption_files(out: Path) -> dict[str, str]:
    return {ext: (out / f"course/lesson-1.{ext}").read_text() for ext in ("srt", "vtt")}


def test_every_cue_starts_within_30_ms_of_its_first_word_in_the_final_file(
    cli: Cli, engine: RunningEngine, tmp_path: Path
) -> None:
    result = cli.using(engine=engine, RIME_WS_URL=engine.ws_url).run("render", manifest(tmp_path))
    assert result.returncode == 0, result
    out = tmp_path / "out"
    cues = parse_srt(caption_files(out)["srt"])
    # One cue per sentence here (two never fit one cue), each starting at the sentence.
    assert [text for _, _, text in cues] == SENTENCES
    programme = probe(out / "course/lesson-1.wav").samples.astype(np.float64)
    for (start, _, _), sentence in zip(cues, SENTENCES, strict=True):
        template = spoken_alone(engine, sentence)[: RATE // 4]
        found, score = locate(programme, template)
        assert score > 0.95, (sentence, score)
        assert abs(start - found) <= TOLERANCE, (sentence, start, found)
    # The same cues in WebVTT, beside every format of the script.
    vtt = caption_files(out)["vtt"]
    assert vtt.startswith("WEBVTT\n\n")
    assert vtt.count(" --> ") == len(cues)
    assert (out / "course/lesson-1.mp3").is_file()


def results(out: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((out / "results.json").read_text())
    return document


def test_captions_are_outputs_of_the_release_and_a_second_render_sends_nothing(
    cli: Cli, engine: RunningEngine, tmp_path: Path
) -> None:
    run = cli.using(engine=engine, RIME_WS_URL=engine.ws_url)
    first = run.run("render", manifest(tmp_path))
    assert first.returncode == 0, first
    out = tmp_path / "out"
    captions = caption_files(out)
    release = results(out)["release"]
    [script] = results(out)["scripts"]
    listed = {o["format"]: o for o in script["outputs"]}
    assert set(listed) == {"wav", "mp3", "srt", "vtt"}
    for fmt in ("srt", "vtt"):
        released = out / "releases" / release / f"course/lesson-1.{fmt}"
        assert listed[fmt]["uri"].endswith(f"releases/{release}/course/lesson-1.{fmt}")
        assert listed[fmt]["published_uri"].endswith(f"course/lesson-1.{fmt}")
        assert released.read_text() == captions[fmt]
        assert listed[fmt]["bytes"] == released.stat().st_size
        assert listed[fmt]["sha256"] == hashlib.sha256(released.read_bytes()).hexdigest()
    # Each segment's word times are cached beside its audio.
    cached = sorted(p.name for p in (out / "cache").rglob("*") if p.is_file())
    assert len([n for n in cached if n.endswith(".wav")]) == 3
    assert len([n for n in cached if n.endswith(".words.json")]) == 3

    before = engine.metrics()["requests"]
    again = run.run("render", manifest(tmp_path))
    assert again.returncode == 0, again
    assert engine.metrics()["requests"] == before
    assert results(out)["release"] != release
    assert results(out)["scripts"][0]["billed_chars"] == 0
    assert caption_files(out) == captions


def test_audio_cached_without_word_times_is_spoken_again_and_stays_valid_for_audio(
    cli: Cli, engine: RunningEngine, tmp_path: Path
) -> None:
    run = cli.using(engine=engine, RIME_WS_URL=engine.ws_url)
    audio_only = run.run("render", manifest(tmp_path, captions=False))
    assert audio_only.returncode == 0, audio_only
    out = tmp_path / "out"
    assert not (out / "course/lesson-1.srt").exists()

    # The cache entries have no word times: the three segments go over /ws3 once each (and
    # the voice is checked first, as for any render that sends something). `diff` says so.
    before = engine.metrics()["requests"]
    diff = run.run("diff", manifest(tmp_path))
    assert diff.returncode == 0, diff
    assert "~ course/lesson-1 (output)" in diff.stdout, diff
    assert "to synthesize: 3 of 3 segments" in diff.stdout, diff
    assert engine.metrics()["requests"] == before
    with_captions = run.run("render", manifest(tmp_path))
    assert with_captions.returncode == 0, with_captions
    assert engine.metrics()["requests"] - before == 3 + 1
    assert [t for _, _, t in parse_srt(caption_files(out)["srt"])] == SENTENCES
    captioned, captions = results(out)["release"], caption_files(out)

    # The cache key is the same for audio-only renders: they still find every segment.
    before = engine.metrics()["requests"]
    again = run.run("render", manifest(tmp_path, captions=False))
    assert again.returncode == 0, again
    assert engine.metrics()["requests"] == before
    # A release without captions unpublishes them with the rest of the old set, and a
    # rollback brings them back with its audio.
    assert not (out / "course/lesson-1.srt").exists()
    rolled = run.run("rollback", "lessons", captioned)
    assert rolled.returncode == 0, rolled
    assert caption_files(out) == captions


@pytest.mark.parametrize("value", ["[txt]", "[srt, srt]"])
def test_a_bad_captions_setting_is_one_clear_error(cli: Cli, tmp_path: Path, value: str) -> None:
    path = manifest(tmp_path, captions=False)
    path.write_text(path.read_text() + f"    captions: {value}\n")
    result = cli.run("plan", path)
    assert result.returncode != 0
    assert "captions" in result.output, result
    assert "Traceback" not in result.output


def test_on_s3_captions_are_objects_of_the_release_and_their_words_are_cached(
    cli: Cli, engine: RunningEngine, tmp_path: Path, s3: S3Env, s3_bucket: str
) -> None:
    run = cli.using(engine=engine, RIME_WS_URL=engine.ws_url)
    destination = s3.uri(s3_bucket, "courses")
    local = run.run("render", manifest(tmp_path), "-o", str(tmp_path / "local"))
    assert local.returncode == 0, local

    result = run.run("render", manifest(tmp_path), "-o", destination)

    assert result.returncode == 0, result
    listed = s3.client.list_objects_v2(Bucket=s3_bucket, Prefix="courses/")
    keys = {o["Key"] for o in listed.get("Contents", [])}
    assert sum(k.endswith(".words.json") for k in keys) == 3
    for ext, content_type in [("srt", "application/x-subrip"), ("vtt", "text/vtt")]:
        obj = s3.client.get_object(Bucket=s3_bucket, Key=f"courses/course/lesson-1.{ext}")
        assert obj["ContentType"] == content_type
        # The same words and the same timeline as in a folder.
        expected = (tmp_path / "local" / f"course/lesson-1.{ext}").read_text()
        assert obj["Body"].read().decode() == expected


def test_plan_lists_the_caption_files_with_the_formats(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("plan", manifest(tmp_path))
    assert result.returncode == 0, result
    assert "wav, mp3, srt, vtt" in result.stdout, result


def test_pruning_the_cache_takes_each_segments_word_times_with_its_audio(
    cli: Cli, engine: RunningEngine, tmp_path: Path
) -> None:
    run = cli.using(engine=engine, RIME_WS_URL=engine.ws_url)
    path = manifest(tmp_path)
    assert run.run("render", path).returncode == 0
    # The last sentence changes; with one release kept, the old one's segment is unused.
    edited = path.read_text().replace("in the rain", "in the snow")
    path.write_text("keep_releases: 1\n" + edited)
    assert run.run("render", path).returncode == 0
    cache = tmp_path / "out" / "cache"
    assert len(list(cache.rglob("*.wav"))) == len(list(cache.rglob("*.words.json"))) == 4

    pruned = run.run("cache", "prune", "lessons")

    assert pruned.returncode == 0, pruned
    assert "freed 1 cached segments" in pruned.stdout and "kept 3" in pruned.stdout, pruned
    stems = {p.name.split(".")[0] for p in cache.rglob("*") if p.is_file()}
    assert len(stems) == 3
    assert len(list(cache.rglob("*.words.json"))) == 3
