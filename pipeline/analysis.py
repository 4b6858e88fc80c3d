"""What a finished audio file measures: loudness, levels, room tone, rate and bitrate.

`rime-batch check` reads any file ffmpeg decodes. One ffmpeg run decodes it once: one branch
of the decoded audio goes through ebur128 (integrated loudness, range, true peak), the other
comes here as 16-bit PCM, summed into 10 ms blocks, which give the RMS, the sample peak, the
noise floor and the silence at either end. MP3 bitrates are read from the frame headers.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from pipeline.audio import DecodeError, ffmpeg_exe, parse_ebur128_summary
from pipeline.loudness import FileFigures
from pipeline.mp3 import frame_bitrates

BLOCK_SECONDS = 0.010
# The noise floor is the RMS of the quietest stretch this long (ACX's tools use 500 ms too).
NOISE_WINDOW_SECONDS = 0.5
# Blocks quieter than this at either end are room tone: above any noise floor ACX allows
# (-60 dB), below speech (the stitcher's speech threshold is the same -50 dBFS).
ROOM_TONE_DBFS = -50.0
_STREAM = re.compile(
    r"Stream #\d+:\d+.*?: Audio: (?P<codec>\w+).*?, (?P<rate>\d+) Hz, "
    r"(?P<layout>mono|stereo|\d+ channels|[\w.()]+)"
)
_READ_BYTES = 1 << 20


def _db(power: float) -> float | None:
    return 10.0 * float(np.log10(power)) if power > 0 else None


def _probe(path: Path) -> tuple[str, int, int]:
    """(codec, sample rate, channels) of the file's first audio stream."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", str(path)],
        capture_output=True,
        check=False,
        start_new_session=True,
    )
    log = proc.stderr.decode(errors="replace")
    found = _STREAM.search(log)
    if found is None:
        raise DecodeError(f"{path}: not an audio file ffmpeg can read")
    layout = found["layout"]
    channels = {"mono": 1, "stereo": 2}.get(layout)
    if channels is None:
        digits = re.match(r"\d+", layout)
        channels = int(digits[0]) if digits else 2
    return found["codec"], int(found["rate"]), channels


def analyze(path: Path) -> FileFigures:
    """Every figure of the audio file at `path`; DecodeError in one line if it is not one."""
    if not path.is_file():
        raise DecodeError(f"{path}: no such file")
    codec, rate, channels = _probe(path)
    graph = "[0:a:0]asplit[pcm][m];[m]ebur128=peak=true:framelog=quiet[measured]"
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-v", "info", "-i", str(path)]
    cmd += ["-filter_complex", graph, "-map", "[pcm]", "-c:a", "pcm_s16le", "-f", "s16le"]
    cmd += ["pipe:1", "-map", "[measured]", "-f", "null", "-"]
    block = max(1, round(rate * BLOCK_SECONDS)) * channels
    energies: list[float] = []
    peak = 0
    frames = 0
    carry = np.zeros(0, dtype=np.int64)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert proc.stdout is not None
        pending = b""
        while chunk := proc.stdout.read(_READ_BYTES):
            pending += chunk
            usable = len(pending) - len(pending) % 2
            samples = np.frombuffer(pending[:usable], dtype="<i2").astype(np.int64)
            pending = pending[usable:]
            if samples.size:
                peak = max(peak, int(np.abs(samples).max()))
            samples = np.concatenate([carry, samples])
            whole = len(samples) - len(samples) % block
            squares = samples[:whole].astype(np.float64) ** 2
            energies.extend(squares.reshape(-1, block).mean(axis=1).tolist())
            carry = samples[whole:]
            frames += whole // channels
        returncode = proc.wait()
        log.seek(0)
        text = log.read().decode(errors="replace")
    if returncode != 0:
        last = text.strip().splitlines()[-1:] or ["ffmpeg failed"]
        raise DecodeError(f"{path}: cannot decode: {last[0]}")
    if carry.size:
        energies.append(float(np.mean(carry.astype(np.float64) ** 2)))
        frames += len(carry) // channels
    power = np.asarray(energies, dtype=np.float64) / (32768.0**2)
    bitrate = constant = None
    if codec == "mp3":
        mp3 = frame_bitrates(path.read_bytes())
        constant = mp3.constant
        bitrate = mp3.kbps if mp3.constant else None
    return FileFigures(
        codec=codec,
        sample_rate=rate,
        channels=channels,
        duration_seconds=frames / rate,
        loudness=parse_ebur128_summary(text),
        rms_db=_db(float(power.mean())) if power.size else None,
        sample_peak_db=20.0 * float(np.log10(peak / 32768.0)) if peak else None,
        noise_floor_db=_noise_floor(power),
        head_silence_seconds=_edge_blocks(power) * BLOCK_SECONDS,
        tail_silence_seconds=_edge_blocks(power[::-1]) * BLOCK_SECONDS,
        bitrate_kbps=bitrate,
        constant_bitrate=constant,
    )


def _noise_floor(power: np.ndarray) -> float | None:
    """RMS level (dB) of the quietest `NOISE_WINDOW_SECONDS` stretch, in 10 ms steps."""
    width = round(NOISE_WINDOW_SECONDS / BLOCK_SECONDS)
    if power.size == 0:
        return None
    if power.size <= width:
        return _db(float(power.mean()))
    sums = np.concatenate([[0.0], np.cumsum(power)])
    quietest = float((sums[width:] - sums[:-width]).min()) / width
    return _db(max(quietest, 0.0))


def _edge_blocks(power: np.ndarray) -> int:
    """How many blocks at the start of `power` are quieter than room tone."""
    loud = np.flatnonzero(power >= 10.0 ** (ROOM_TONE_DBFS / 10.0))
    return int(loud[0]) if loud.size else int(power.size)
