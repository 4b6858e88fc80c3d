"""Streaming audio encoders: PCM in, the requested format out, a chunk at a time.

WAV, raw PCM and mu-law are done in Python. MP3 and Opus go through ffmpeg (from the
`imageio-ffmpeg` wheel): PCM is written to its stdin while its stdout is read as it comes.

Choices where Rime says nothing:
- Streamed WAV has no length up front, so its RIFF and data sizes are 0xFFFFFFFF (what ffmpeg
  writes to a pipe); decoders read to the end of the stream.
- MP3 is bare frames (no ID3 tag, no Xing header), so the outputs of several syntheses on one
  WebSocket concatenate into one valid stream. MP3 only has certain sampling rates; other
  requested rates are encoded at the nearest one MP3 allows. Opus is encoded at 48 kHz.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import struct
from enum import StrEnum
from typing import Protocol

import imageio_ffmpeg

from rime_local.synthesis import SAMPLE_WIDTH


class Encoding(StrEnum):
    """An output encoding the engine can stream."""

    MP3 = "mp3"
    WAV = "wav"
    PCM = "pcm"
    MULAW = "mulaw"
    OGG_OPUS = "ogg_opus"
    WEBM_OPUS = "webm_opus"

    @property
    def media_type(self) -> str:
        """The Content-Type of a response in this format."""
        return _MEDIA_TYPES[self]


_MEDIA_TYPES = {
    Encoding.MP3: "audio/mpeg",
    Encoding.WAV: "audio/wav",
    Encoding.PCM: "audio/pcm",
    Encoding.MULAW: "audio/x-mulaw",
    Encoding.OGG_OPUS: "audio/ogg; codecs=opus",
    Encoding.WEBM_OPUS: "audio/webm; codecs=opus",
}

MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


class Encoder(Protocol):
    """Takes PCM (16-bit LE mono), gives encoded bytes; `finish` returns the tail."""

    async def push(self, pcm: bytes) -> bytes: ...

    async def finish(self) -> bytes: ...

    async def abort(self) -> None: ...


class PcmEncoder:
    """Raw 16-bit little-endian mono: the input as is."""

    async def push(self, pcm: bytes) -> bytes:
        """The same bytes."""
        return pcm

    async def finish(self) -> bytes:
        """Nothing is held back."""
        return b""

    async def abort(self) -> None:
        """Nothing to release."""


class MulawEncoder(PcmEncoder):
    """G.711 mu-law, one byte per sample."""

    async def push(self, pcm: bytes) -> bytes:
        """Each 16-bit sample as one mu-law byte."""
        return audioop.lin2ulaw(pcm, SAMPLE_WIDTH)


def streaming_wav_header(sample_rate: int) -> bytes:
    """A 44-byte PCM WAV header whose sizes say 'unknown' (0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    byte_rate = sample_rate * SAMPLE_WIDTH
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, byte_rate, SAMPLE_WIDTH, 16)
        + b"data"
        + struct.pack("<I", unknown)
    )


class WavEncoder(PcmEncoder):
    """A streaming WAV: header first, then PCM."""

    def __init__(self, sample_rate: int) -> None:
        self._header: bytes | None = streaming_wav_header(sample_rate)

    def _take_header(self) -> bytes:
        header, self._header = self._header or b"", None
        return header

    async def push(self, pcm: bytes) -> bytes:
        """The header (once), then the samples."""
        return self._take_header() + pcm

    async def finish(self) -> bytes:
        """The header if no audio was pushed at all, so the output is still a WAV."""
        return self._take_header()


def nearest_mp3_rate(rate: int) -> int:
    """The MP3 sampling rate closest to `rate`."""
    return min(MP3_RATES, key=lambda r: abs(r - rate))


def ffmpeg_output_args(fmt: Encoding, rate: int) -> list[str]:
    """ffmpeg arguments after the input for an encoded format."""
    if fmt is Encoding.MP3:
        out_rate = nearest_mp3_rate(rate)
        bitrate = "48k" if out_rate <= 16000 else "96k" if out_rate <= 24000 else "128k"
        return [
            *("-ar", str(out_rate), "-c:a", "libmp3lame", "-b:a", bitrate),
            *("-write_xing", "0", "-id3v2_version", "0", "-f", "mp3"),
        ]
    if fmt is Encoding.OGG_OPUS:
        return [
            *("-ar", "48000", "-c:a", "libopus", "-b:a", "48k"),
            *("-page_duration", "20000", "-f", "ogg"),
        ]
    if fmt is Encoding.WEBM_OPUS:
        return [
            *("-ar", "48000", "-c:a", "libopus", "-b:a", "48k"),
            *("-live", "1", "-cluster_time_limit", "100", "-f", "webm"),
        ]
    raise ValueError(f"{fmt.value} is not encoded by ffmpeg")


class FfmpegEncoder:
    """An ffmpeg child process fed PCM on stdin; its stdout is collected as it arrives."""

    def __init__(self, fmt: Encoding, sample_rate: int) -> None:
        self._fmt = fmt
        self._rate = sample_rate
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._out = bytearray()

    async def _start(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            self._proc = await asyncio.create_subprocess_exec(
                imageio_ffmpeg.get_ffmpeg_exe(),
                *("-hide_banner", "-loglevel", "error", "-nostdin"),
                *("-f", "s16le", "-ar", str(self._rate), "-ac", "1", "-i", "pipe:0"),
                *ffmpeg_output_args(self._fmt, self._rate),
                *("-flush_packets", "1", "pipe:1"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            self._reader = asyncio.create_task(self._read(self._proc))
        return self._proc

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while data := await proc.stdout.read(65536):
            self._out += data

    def _take(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    async def push(self, pcm: bytes) -> bytes:
        """Feed PCM; return whatever ffmpeg has produced so far."""
        proc = await self._start()
        assert proc.stdin is not None
        if pcm:
            proc.stdin.write(pcm)
            await proc.stdin.drain()
        return self._take()

    async def finish(self) -> bytes:
        """Close ffmpeg's input and return everything it still had to say."""
        proc = await self._start()
        assert proc.stdin is not None and self._reader is not None
        proc.stdin.close()
        await self._reader
        code = await proc.wait()
        if code != 0:
            raise RuntimeError(f"ffmpeg exited with status {code} encoding {self._fmt.value}")
        return self._take()

    async def abort(self) -> None:
        """Stop ffmpeg without waiting for its output."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        await proc.wait()


def make_encoder(fmt: Encoding, sample_rate: int) -> Encoder:
    """A fresh encoder for one stream of `fmt` at `sample_rate`."""
    if fmt is Encoding.PCM:
        return PcmEncoder()
    if fmt is Encoding.MULAW:
        return MulawEncoder()
    if fmt is Encoding.WAV:
        return WavEncoder(sample_rate)
    return FfmpegEncoder(fmt, sample_rate)
