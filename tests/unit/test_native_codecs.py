"""PCM WAV and 8 kHz mu-law written without ffmpeg are byte for byte what ffmpeg writes.

Each property encodes the same samples both ways, through `pipeline.audio.encode` and through
the real ffmpeg with the very arguments the pipeline gives it, and compares the files.
"""

from __future__ import annotations

import itertools
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import wav
from pipeline.audio import encode, encoder_args, ffmpeg_exe, written_here
from pipeline.g711 import encode_mulaw

ALL_SAMPLES = np.arange(-32768, 32768, dtype="<i2").tobytes()


def ffmpeg_encoded(pcm: bytes, fmt: str, rate: int, folder: Path) -> bytes:
    """`pcm` encoded by ffmpeg as the pipeline asks it to (see pipeline.audio.encode)."""
    target = folder / f"ffmpeg-{fmt}"
    args = encoder_args(fmt, sample_rate=rate, mp3_bitrate="128k")
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error"]
    cmd += ["-f", "s16le", "-ar", str(rate), "-ac", "1", "-i", "pipe:0"]
    cmd += ["-map", "0:a", "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact"]
    cmd += [*args, "-y", str(target)]
    subprocess.run(cmd, input=pcm, check=True, capture_output=True, timeout=60)
    return target.read_bytes()


def test_mulaw_matches_ffmpeg_for_every_sample_value(tmp_path: Path) -> None:
    assert encode_mulaw(ALL_SAMPLES) == ffmpeg_encoded(ALL_SAMPLES, "mulaw", 8000, tmp_path)


def test_only_what_needs_no_resampling_is_written_here() -> None:
    assert written_here("wav", 22050) and written_here("wav", 8000)
    assert written_here("wav-mulaw", 8000) and written_here("mulaw", 8000)
    assert not written_here("wav-mulaw", 22050) and not written_here("mulaw", 16000)
    assert not written_here("mp3", 8000) and not written_here("ogg", 48000)


samples = st.lists(st.integers(-32768, 32767), max_size=3000).map(
    lambda values: np.array(values, dtype="<i2").tobytes()
)
# Chunk boundaries anywhere: the encoders see the programme in pieces, one segment at a time.
cuts = st.lists(st.integers(0, 3000), max_size=4)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pcm=samples,
    cut_at=cuts,
    fmt=st.sampled_from(["wav", "wav-mulaw", "mulaw"]),
    rate=st.sampled_from([8000, 16000, 22050, 44100]),
)
def test_native_outputs_equal_ffmpeg_outputs(
    tmp_path: Path, pcm: bytes, cut_at: list[int], fmt: str, rate: int
) -> None:
    if fmt != "wav":
        rate = 8000  # mu-law is written here at 8 kHz only; other rates are ffmpeg's
    edges = sorted({0, len(pcm) // 2, *(min(c, len(pcm) // 2) for c in cut_at)})
    chunks = [pcm[2 * a : 2 * b] for a, b in itertools.pairwise(edges)] or [b""]
    target = tmp_path / f"native-{fmt}"
    encode(iter(chunks), sample_rate=rate, outputs={fmt: target})
    assert target.read_bytes() == ffmpeg_encoded(pcm, fmt, rate, tmp_path)


def test_native_and_ffmpeg_outputs_come_from_one_pass(tmp_path: Path) -> None:
    pcm = np.sin(np.arange(8000) / 7.0).astype(np.float32)
    data = (pcm * 20000).astype("<i2").tobytes()
    passes = 0

    def chunks() -> object:
        nonlocal passes
        passes += 1
        yield data[:6000]
        yield data[6000:]

    outputs = {"wav-mulaw": tmp_path / "a.mulaw.wav", "mp3": tmp_path / "a.mp3"}
    encode(chunks(), sample_rate=8000, outputs=outputs)  # type: ignore[arg-type]
    assert passes == 1
    assert outputs["wav-mulaw"].read_bytes() == ffmpeg_encoded(data, "wav-mulaw", 8000, tmp_path)
    assert outputs["mp3"].stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failing_producer_leaves_no_file_behind(tmp_path: Path) -> None:
    def chunks() -> object:
        yield b"\x00\x01" * 100
        raise RuntimeError("the stitcher failed")

    target = tmp_path / "a.wav"
    with pytest.raises(RuntimeError, match="stitcher failed"):
        encode(chunks(), sample_rate=8000, outputs={"wav": target})  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@given(rate=st.integers(1, 384_000), frames=st.integers(0, 1 << 20))
def test_headers_read_back_as_written(rate: int, frames: int) -> None:
    for header, tag, bits, data in (
        (wav.cache_header(rate, 2 * frames), wav.FORMAT_PCM, 16, 2 * frames),
        (wav.pcm16_header(rate, 2 * frames), wav.FORMAT_PCM, 16, 2 * frames),
        (wav.mulaw_header(rate, frames), wav.FORMAT_MULAW, 8, frames),
    ):
        info = wav.parse(header + bytes(data))
        assert (info.format_tag, info.channels, info.sampling_rate, info.bits) == (
            tag,
            1,
            rate,
            16 if bits == 16 else 8,
        )
        assert (info.data_offset, info.data_bytes) == (len(header), data)


def test_past_4_gib_a_pcm_output_becomes_rf64_in_place() -> None:
    small = wav.pcm16_header(48000, 1000)
    huge = wav.pcm16_header(48000, 5 << 30)
    assert len(small) == len(huge) == 80  # the JUNK chunk turns into ds64, nothing moves
    assert huge[:4] == b"RF64" and huge[36:40] == b"ds64"
    riff, data, frames = struct.unpack_from("<QQQ", huge, 44)
    assert (riff, data, frames) == (80 - 8 + (5 << 30), 5 << 30, (5 << 30) // 2)
