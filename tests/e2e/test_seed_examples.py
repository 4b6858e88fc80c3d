"""Rime's own example programs (seeds 002 and 004), run as real processes against the engine.

Each program in seed_programs/ is the seed's code with only the host (RIME_WS_URL) and the key
(RIME_API_KEY) taken from the environment. Three of them only pretend to play audio, so their
audio is measured on the engine's side (its metrics); seed 002 saves an MP3 that is decoded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rime_local.server import RunningEngine
from tests.fixtures.engine import decoded_seconds
from tests.fixtures.services import poll_until

PROGRAMS = Path(__file__).parent / "seed_programs"
KEY = "seed-example-key"
Factory = Callable[..., RunningEngine]


def _env(engine: RunningEngine) -> dict[str, str]:
    return {
        **os.environ,
        "RIME_WS_URL": engine.ws_url,
        "RIME_API_KEY": KEY,
        "PYTHONUNBUFFERED": "1",
    }


def _run(program: str, engine: RunningEngine, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROGRAMS / program)],
        env=_env(engine),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def keyed_engine(engine_factory: Factory) -> RunningEngine:
    """An engine that only accepts the examples' key, so their auth header is exercised."""
    return engine_factory(api_keys=[KEY])


def test_seed_002_ws_client_saves_playable_mp3(keyed_engine: RunningEngine, tmp_path: Path) -> None:
    result = _run("ws_binary_client.py", keyed_engine, tmp_path)
    assert result.returncode == 0, result.stderr
    mp3 = (tmp_path / "output.mp3").read_bytes()
    seconds = decoded_seconds(mp3, "mp3")
    # "This is a sentence, that will produce audio." spoken once: a few seconds.
    assert 1.5 < seconds < 6.0
    metrics = keyed_engine.metrics()
    # /ws buffers up to the comma, then the rest: two syntheses.
    assert metrics["completed"] == 2
    assert metrics["audio_seconds"] == pytest.approx(seconds, abs=0.3)


def test_seed_002_with_a_wrong_key_fails(engine_factory: Factory, tmp_path: Path) -> None:
    locked = engine_factory(api_keys=["another-key"])
    result = _run("ws_binary_client.py", locked, tmp_path)
    assert result.returncode != 0
    assert "401" in result.stderr
    assert not (tmp_path / "output.mp3").exists()


def test_seed_004_never_speaks_once_after_its_flush(
    keyed_engine: RunningEngine, tmp_path: Path
) -> None:
    # The program waits for messages forever: let it run until it has printed what the engine
    # spoke, then stop it.
    printed = tmp_path / "stdout.txt"
    with printed.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-u", str(PROGRAMS / "ws3_never.py")],
            env=_env(keyed_engine),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        poll_until(
            lambda: "'that.']" in printed.read_text() or process.poll() is not None,
            30,
            "the example to print the word timings",
        )
        # The example never closes its connection: still running once its audio has come.
        assert process.poll() is None, "the example should still be waiting for messages"
    finally:
        process.kill()
        process.communicate(timeout=10)
    stdout = printed.read_text()
    metrics = keyed_engine.metrics()
    assert metrics["completed"] == 1
    assert metrics["characters"] == len("Sure, I'd be happy to help with that.")
    assert 1.0 < metrics["audio_seconds"] < 6.0
    assert stdout.startswith("Timestamps: {'words': ['Sure,', \"I'd\", 'be', 'happy'")
    assert "'that.']" in stdout


def test_seed_004_by_sentence_runs_to_completion(
    keyed_engine: RunningEngine, tmp_path: Path
) -> None:
    result = _run("ws3_by_sentence.py", keyed_engine, tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = keyed_engine.metrics()
    text = (
        "The weather today is sunny. Temperatures will reach the mid-seventies. Enjoy the sunshine!"
    )
    assert metrics["characters"] == len(text)
    assert 1 <= metrics["completed"] <= 3
    assert 4.0 < metrics["audio_seconds"] < 12.0


def test_seed_004_immediate_runs_to_completion(keyed_engine: RunningEngine, tmp_path: Path) -> None:
    result = _run("ws3_immediate.py", keyed_engine, tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = keyed_engine.metrics()
    phrases = [
        "Your order has been confirmed.",
        "It will arrive within three to five business days.",
        "Is there anything else I can help you with?",
    ]
    assert metrics["characters"] == sum(len(p) for p in phrases)
    assert 1 <= metrics["completed"] <= 3
    assert 4.0 < metrics["audio_seconds"] < 12.0
