"""Received-audio checks on real files: whole ones pass, cut ones raise StreamCut."""

from __future__ import annotations

import io
import math
import struct
import subprocess
import wave
from functools import cache

import imageio_ffmpeg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.rime.checks import check_audio, check_ogg, duration, mp3_frames, parse_wav
from pipeline.rime.errors import StreamCut
from pipeline.rime.params import AudioFormat

RATE = 22050


def _tone_pcm(seconds: float, rate: int = RATE) -> bytes:
    n = int(seconds * rate)
    return b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(n)
    )


def _wav(pcm: bytes, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


@cache
def _encoded(fmt: str) -> bytes:
    """Half a second of tone encoded by the real ffmpeg."""
    args = {"mp3": ["-f", "mp3", "-b:a", "64k"], "ogg": ["-c:a", "libopus", "-f", "ogg"]}[fmt]
    raw_input = ["-f", "s16le", "-ar", str(RATE), "-ac", "1", "-i", "pipe:0"]
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", *raw_input, *args, "pipe:1"],
        input=_tone_pcm(0.5),
        capture_output=True,
        check=True,
    )
    return result.stdout


def test_wav_header_and_duration() -> None:
    data = _wav(_tone_pcm(0.5))
    info = parse_wav(data)
    assert (info.sampling_rate, info.channels, info.sample_width) == (RATE, 1, 2)
    assert info.frames == int(0.5 * RATE)
    assert duration(data, AudioFormat.WAV, RATE) == pytest.approx(0.5, abs=1 / RATE)


@given(cut=st.integers(min_value=1, max_value=2000))
def test_a_cut_wav_is_a_stream_cut(cut: int) -> None:
    data = _wav(_tone_pcm(0.05))
    with pytest.raises(StreamCut):
        check_audio(data[:-cut], AudioFormat.WAV)


def test_a_streaming_wav_with_unknown_length_is_whole_at_a_frame_boundary() -> None:
    data = bytearray(_wav(_tone_pcm(0.1)))
    # A streaming writer's placeholder sizes: RIFF and data lengths unknown.
    data[4:8] = b"\xff\xff\xff\xff"
    data[40:44] = b"\xff\xff\xff\xff"
    assert parse_wav(bytes(data)).frames == int(0.1 * RATE)
    with pytest.raises(StreamCut, match="inside a sample frame"):
        parse_wav(bytes(data[:-1]))


def test_pcm_must_end_on_a_sample() -> None:
    pcm = _tone_pcm(0.25)
    check_audio(pcm, AudioFormat.PCM)
    assert duration(pcm, AudioFormat.PCM, RATE) == pytest.approx(0.25, abs=1 / RATE)
    with pytest.raises(StreamCut, match="inside a sample"):
        check_audio(pcm[:-1], AudioFormat.PCM)
    with pytest.raises(StreamCut, match="no pcm audio"):
        check_audio(b"", AudioFormat.PCM)


def test_mulaw_duration_is_one_byte_per_sample() -> None:
    assert duration(b"\x7f" * 8000, AudioFormat.MULAW, 8000) == 1.0
    assert duration(b"\x00" * 10, AudioFormat.MP3, 8000) is None


def test_a_whole_mp3_passes_and_counts_its_frames() -> None:
    data = _encoded("mp3")
    frames = mp3_frames(data)
    # 0.5 s at 22050 Hz is about 20 MPEG-2 frames of 576 samples (plus encoder padding).
    assert 19 <= frames <= 25


@given(cut=st.integers(min_value=1, max_value=100))
def test_a_cut_mp3_is_a_stream_cut(cut: int) -> None:
    # 64 kbit/s at 22050 Hz makes frames of about 208 bytes: any cut under that ends mid-frame.
    with pytest.raises(StreamCut):
        check_audio(_encoded("mp3")[:-cut], AudioFormat.MP3)


def test_bytes_that_are_not_mp3_are_refused() -> None:
    with pytest.raises(StreamCut, match="no whole frame header at byte 0"):
        mp3_frames(b"<html>Bad gateway</html>")


def test_a_whole_ogg_passes_and_a_cut_one_does_not() -> None:
    data = _encoded("ogg")
    check_ogg(data)
    with pytest.raises(StreamCut, match="inside a page"):
        check_ogg(data[:-3])
    # Cut exactly at a page boundary: the pages are whole but the end-of-stream page is missing.
    last_page = data.rindex(b"OggS")
    with pytest.raises(StreamCut, match="end-of-stream"):
        check_ogg(data[:last_page])
