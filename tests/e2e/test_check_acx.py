"""`preset: acx` renders what ACX accepts, and `rime-batch check --acx` says so, or what fails."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pipeline.audio import ffmpeg_exe
from tests.fixtures.cli import Cli

CHAPTER = (
    "Chapter One. <400> It is a truth universally acknowledged, that a single man in "
    "possession of a good fortune, must be in want of a wife.\n\nHowever little known the "
    "feelings or views of such a man may be on his first entering a neighbourhood, this truth "
    "is so well fixed in the minds of the surrounding families."
)


def test_an_acx_render_passes_check_and_a_quiet_copy_fails_naming_the_figure(
    cli: Cli, tmp_path: Path
) -> None:
    manifest = tmp_path / "book.yaml"
    manifest.write_text(
        "job: book\noutput: out\ndefaults: {preset: acx, speaker: alpine}\n"
        f"scripts:\n  - id: ch01\n    text: {json.dumps(CHAPTER)}\n",
        encoding="utf-8",
    )
    rendered = cli.run("render", manifest)
    assert rendered.returncode == 0, rendered
    mp3 = tmp_path / "out" / "ch01.mp3"
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    loudness = results["scripts"][0]["loudness"]
    assert loudness["target_lufs"] == -20.0 and loudness["ceiling_dbtp"] == -3.5
    assert abs(loudness["integrated_lufs"] + 20.0) <= 0.5
    assert results["scripts"][0]["warnings"] == []

    passed = cli.run("check", "--acx", mp3)
    assert passed.returncode == 0, passed
    assert "FAIL" not in passed.stdout
    assert "44100 Hz" in passed.stdout and "192 kbps CBR" in passed.stdout

    quiet = tmp_path / "quiet.mp3"
    quieter = ["-af", "volume=-12dB", "-c:a", "libmp3lame", "-b:a", "192k", str(quiet)]
    made = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(mp3), *quieter], check=False)
    assert made.returncode == 0
    failed = cli.run("check", "--acx", mp3, quiet)
    assert failed.returncode == 1, failed
    assert f"{quiet}: fails ACX: RMS" in failed.stderr
    assert f"{mp3}: fails" not in failed.stderr
    assert "Traceback" not in failed.output

    status = cli.run("status", results["job_id"])
    assert status.returncode == 0 and "LUFS" in status.stdout


def test_check_names_a_missing_or_broken_file_in_one_line(cli: Cli, tmp_path: Path) -> None:
    broken = tmp_path / "notes.mp3"
    broken.write_text("not audio at all", encoding="utf-8")
    done = cli.run("check", tmp_path / "absent.wav", broken)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"error: {tmp_path / 'absent.wav'}: no such file",
        f"error: {broken}: not an audio file ffmpeg can read",
    ]
