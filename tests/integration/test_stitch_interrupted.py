"""A stitch killed mid-way (SIGKILL, in a real subprocess): no output is left half-written.

Each output is encoded under a temporary name and renamed into place whole, so a kill at any
moment leaves the previous outputs as they were, byte for byte, and nothing under an output's
name that a player or an upload could pick up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

from pipeline.files import is_temp_name, sha256_file
from pipeline.plan import OutputSpec
from pipeline.stitch import Part, StitchSpec, stitch
from pipeline.storage import OUTPUT_EXTENSIONS
from tests.fixtures.services import poll_until

RATE = 24000
FORMATS = ("wav", "mp3")
# Long enough that encoding takes seconds: the kill lands while the temp files grow.
SEGMENTS, SEGMENT_SECONDS = 12, 30

CHILD = """
import sys
from pathlib import Path
from pipeline.plan import OutputSpec
from pipeline.stitch import Part, StitchSpec, stitch
folder = Path(sys.argv[1])
parts = [Part(p, 250) for p in sorted(folder.glob("seg-*.wav"))]
stitch(parts, StitchSpec(int(sys.argv[2]), folder / "out", "prog", OutputSpec(tuple(sys.argv[3:]))))
"""


def write_segment(path: Path, seconds: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pcm = np.clip(rng.normal(0, 3000, round(seconds * RATE)), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return path


def bytes_in(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def test_a_stitch_killed_while_encoding_leaves_the_previous_outputs_whole(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    spec = StitchSpec(RATE, out, "prog", OutputSpec(FORMATS))
    # The outputs of an earlier, shorter stitch of the same script.
    short = [Part(write_segment(tmp_path / "short.wav", 1.0, seed=0), 250)]
    before = {fmt: f.sha256 for fmt, f in stitch(short, spec).files.items()}
    for i in range(SEGMENTS):
        write_segment(tmp_path / f"seg-{i:02d}.wav", SEGMENT_SECONDS, seed=i + 1)

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), str(RATE), *FORMATS],
        start_new_session=True,  # its ffmpeg encoders die with it
    )
    try:
        poll_until(
            lambda: child.poll() is not None or bytes_in(out) > 1_000_000,
            120,
            "the stitch to be under way",
        )
        assert child.poll() is None, f"the stitch ended before the kill ({child.returncode})"
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)

    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if not is_temp_name(n)] == ["prog.mp3", "prog.wav"]
    after = {fmt: sha256_file(out / f"prog{OUTPUT_EXTENSIONS[fmt]}") for fmt in FORMATS}
    assert after == before, "an output was replaced by a half-written file"
