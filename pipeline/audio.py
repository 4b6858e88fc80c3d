"""PCM in and out through ffmpeg: decode a segment file, measure loudness, encode outputs.

Audio inside the pipeline is mono float32 in [-1, 1) at the script's sampling rate. ffmpeg
comes from the imageio-ffmpeg wheel; there is no ffprobe, so every decode asks ffmpeg for raw
s16le at a known rate and channel count instead of probing.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt

from pipeline.errors import RimeBatchError

Samples = npt.NDArray[np.float32]
Pcm16 = npt.NDArray[np.int16]

FULL_SCALE = 32768.0  # int16 full scale
SAMPLE_WIDTH = 2
TELEPHONY_RATE = 8000  # G.711 mu-law is defined at 8 kHz
OPUS_RATE = 48000  # Ogg/Opus always decodes at 48 kHz; encode there to avoid a second resample
OPUS_BITRATE = "64k"  # transparent for mono speech
# EBU R128 gates out everything below -70 LUFS: a measurement there means "silence".
ABSOLUTE_GATE_LUFS = -70.0

# Output format name -> file extension; the names are OutputSpec.formats values.
EXTENSIONS: Mapping[str, str] = {
    "wav": ".wav",
    "wav-mulaw": ".mulaw.wav",
    "mulaw": ".ulaw",
    "mp3": ".mp3",
    "ogg": ".ogg",
}

# Streaming WAV writers cannot know the length up front and leave a placeholder size.
_WAV_UNKNOWN_SIZES = frozenset({0, 0xFFFFFFFF, 0x7FFFFFFF})
_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_STDERR_TAIL = 2000


class AudioError(RimeBatchError):
    """Audio could not be decoded, measured or encoded."""


class DecodeError(AudioError):
    """A segment file is not audio ffmpeg can decode."""


class EncodeError(AudioError):
    """ffmpeg failed while measuring or encoding."""


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped in the imageio-ffmpeg wheel."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def decode(path: Path, sample_rate: int) -> Samples:
    """The whole file as mono float32 at `sample_rate` (one segment, so it fits in memory)."""
    pcm = _read_plain_wav(path, sample_rate)
    if pcm is None:
        pcm = _ffmpeg_decode(path, sample_rate)
    return pcm.astype(np.float32) / np.float32(FULL_SCALE)


def to_pcm16(samples: Samples, gain: float = 1.0) -> bytes:
    """Little-endian 16-bit PCM of `samples` times `gain`, rounded and clipped."""
    scaled = np.rint(samples * np.float32(gain * FULL_SCALE))
    pcm: Pcm16 = np.clip(scaled, -32768, 32767).astype("<i2")
    return pcm.tobytes()


def _read_plain_wav(path: Path, sample_rate: int) -> Pcm16 | None:
    """Samples of a 16-bit mono PCM WAV at `sample_rate`, without ffmpeg; None for anything else.

    This is what the segment cache holds, so the common case skips a process start. The
    standard library's `wave` would return no frames for a streamed header's placeholder size.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DecodeError(f"cannot read segment audio {path.name}: {exc.strerror}") from exc
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    fmt_ok = False
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                return None
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == _WAVE_FORMAT_EXTENSIBLE and size >= 40:
                (tag,) = struct.unpack_from("<H", data, body + 24)  # the sub-format GUID
            fmt_ok = (tag, channels, rate, bits) == (_WAVE_FORMAT_PCM, 1, sample_rate, 16)
            if not fmt_ok:
                return None
        elif chunk_id == b"data":
            if not fmt_ok:
                return None
            end = len(data) if size in _WAV_UNKNOWN_SIZES else min(len(data), body + size)
            end -= (end - body) % SAMPLE_WIDTH
            return np.frombuffer(data, dtype="<i2", count=(end - body) // 2, offset=body)
        pos = body + size + (size & 1)
    return None


def _ffmpeg_decode(path: Path, sample_rate: int) -> Pcm16:
    cmd = [
        ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-i",
        str(path),
        "-map",
        "0:a:0",
        "-ac",
        "1",
        "-ar",
        str(sample_rate),
        "-f",
        "s16le",
        "pipe:1",
    ]
    # A session of its own: Ctrl-C at the terminal is ours to handle, not ffmpeg's.
    proc = subprocess.run(cmd, capture_output=True, check=False, start_new_session=True)
    if proc.returncode != 0:
        detail = _tail(proc.stderr.decode(errors="replace"))
        raise DecodeError(f"cannot decode segment audio {path.name}: {detail}")
    return np.frombuffer(proc.stdout, dtype="<i2")


@dataclass(frozen=True)
class Loudness:
    """An EBU R128 measurement of a whole programme; None where it is silent."""

    integrated_lufs: float | None
    true_peak_dbtp: float | None


_SUMMARY = re.compile(
    r"Summary:.*?I:\s+(?P<i>-?inf|-?[\d.]+) LUFS.*?Peak:\s+(?P<tp>-?inf|-?[\d.]+) dBFS",
    re.DOTALL,
)


def parse_ebur128_summary(log: str) -> Loudness:
    """The integrated loudness and true peak from ffmpeg's ebur128 summary in `log`."""
    matches = list(_SUMMARY.finditer(log))
    if not matches:
        raise EncodeError(f"no loudness summary in ffmpeg's output: {_tail(log)}")
    last = matches[-1]
    integrated = float(last["i"])
    peak = float(last["tp"])
    return Loudness(
        integrated_lufs=integrated if integrated > ABSOLUTE_GATE_LUFS else None,
        true_peak_dbtp=peak if np.isfinite(peak) else None,
    )


def measure_loudness(chunks: Iterable[Samples], sample_rate: int) -> Loudness:
    """Integrated loudness and true peak of the concatenated `chunks`, streamed through ffmpeg."""
    # ebur128 is several times faster than loudnorm's measuring mode, which resamples to 192 kHz.
    cmd = [
        ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-v",
        "info",
        *_raw_input("f32le", sample_rate),
        "-af",
        "ebur128=peak=true:framelog=quiet",
        "-f",
        "null",
        "-",
    ]
    log = _run_ffmpeg(cmd, (np.ascontiguousarray(c, dtype="<f4").tobytes() for c in chunks))
    return parse_ebur128_summary(log)


def encoder_args(fmt: str, *, sample_rate: int, mp3_bitrate: str) -> list[str]:
    """ffmpeg output options that produce format `fmt` from mono PCM at `sample_rate`."""
    match fmt:
        case "wav":
            # Past 4 GiB (12 hours at 48 kHz) a plain WAV header overflows; RF64 takes over.
            return ["-c:a", "pcm_s16le", "-rf64", "auto", "-f", "wav"]
        case "wav-mulaw":
            # No RF64 reservation: telephony players want the plain header, and 4 GiB at
            # 8 kB/s is 149 hours.
            return ["-ar", str(TELEPHONY_RATE), "-c:a", "pcm_mulaw", "-f", "wav"]
        case "mulaw":
            return ["-ar", str(TELEPHONY_RATE), "-c:a", "pcm_mulaw", "-f", "mulaw"]
        case "mp3":
            # libmp3lame picks the nearest MPEG rate and caps the bitrate for low rates itself.
            return ["-c:a", "libmp3lame", "-b:a", mp3_bitrate, "-f", "mp3"]
        case "ogg":
            return ["-ar", str(OPUS_RATE), "-c:a", "libopus", "-b:a", OPUS_BITRATE, "-f", "ogg"]
    raise AudioError(f"unknown output format {fmt!r}; expected one of {', '.join(EXTENSIONS)}")


def encode(
    chunks: Iterable[bytes],
    *,
    sample_rate: int,
    outputs: Mapping[str, Path],
    mp3_bitrate: str = "128k",
) -> None:
    """Encode 16-bit PCM `chunks` into every format of `outputs` with one ffmpeg process.

    Each file is written under a temporary name beside its target and renamed into place
    only when ffmpeg has finished cleanly, so a reader never sees a partial file.
    """
    args = {
        fmt: encoder_args(fmt, sample_rate=sample_rate, mp3_bitrate=mp3_bitrate) for fmt in outputs
    }
    temps = {
        fmt: path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        for fmt, path in outputs.items()
    }
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-v", "error"]
    cmd += _raw_input("s16le", sample_rate)
    for fmt, temp in temps.items():
        # bitexact keeps encoder version strings and random Ogg serials out of the files, so
        # the same input gives the same bytes.
        cmd += ["-map", "0:a", "-map_metadata", "-1", "-fflags", "+bitexact"]
        cmd += ["-flags:a", "+bitexact", *args[fmt], "-y", str(temp)]
    try:
        _run_ffmpeg(cmd, chunks)
        for fmt, temp in temps.items():
            _fsync(temp)
            os.replace(temp, outputs[fmt])
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)


def _raw_input(sample_format: str, sample_rate: int) -> list[str]:
    return ["-f", sample_format, "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0"]


def _run_ffmpeg(cmd: list[str], chunks: Iterable[bytes]) -> str:
    """Run ffmpeg on `chunks` written to its stdin; its log, or EncodeError if it failed.

    The log goes to a temporary file rather than a pipe: a full pipe would block ffmpeg while
    we block writing its stdin. Any error while producing `chunks` kills ffmpeg.
    """
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,  # Ctrl-C must not kill it mid-file: we decide
        )
        assert proc.stdin is not None
        cut = False
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            cut = True  # ffmpeg went away; its exit code and log say why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            with suppress(BrokenPipeError):
                proc.stdin.close()
        returncode = proc.wait()
        text = _read_log(log)
    if returncode != 0 or cut:
        raise EncodeError(f"ffmpeg exited with {returncode}: {_tail(text)}")
    return text


def _read_log(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _STDERR_TAIL else "..." + text[-_STDERR_TAIL:]
