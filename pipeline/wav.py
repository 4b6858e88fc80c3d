"""WAV headers, read and written: the one home of the RIFF layout, with nothing decoded here.

Three layouts are written. The segment cache holds the canonical 44-byte PCM header (what the
standard library's `wave` writes). Outputs are laid out byte for byte as ffmpeg writes them, so
a file is the same whichever encoder produced it:

    PCM output     RIFF WAVE, fmt (16 bytes), JUNK (28 bytes), data; past 4 GiB the file
                   becomes RF64 in place: RIFF -> RF64 and JUNK -> ds64 (ffmpeg's `-rf64 auto`)
    mu-law output  RIFF WAVE, fmt (18 bytes, format tag 7), fact (sample count), data

Reading accepts any chunk order and the placeholder sizes of streaming writers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FORMAT_PCM = 1
FORMAT_MULAW = 7
_FORMAT_EXTENSIBLE = 0xFFFE
# Streaming WAV writers cannot know the length up front and put a placeholder in the header.
UNKNOWN_SIZES = frozenset({0, 0xFFFFFFFF, 0x7FFFFFFF})
_U32_MAX = 0xFFFFFFFF
_JUNK_BYTES = 28  # exactly the size of a ds64 chunk's body


def pad_bytes(data_bytes: int) -> bytes:
    """What follows a data chunk of `data_bytes`: RIFF chunks end on an even offset."""
    return b"\0" if data_bytes & 1 else b""


class WavError(ValueError):
    """Bytes that cannot be a whole WAV file; the message says what is wrong."""


@dataclass(frozen=True)
class WavInfo:
    """What a WAV header says, and how much sample data is really there."""

    format_tag: int  # 1 PCM, 7 mu-law (the sub-format of an extensible header)
    channels: int
    sampling_rate: int
    bits: int
    data_offset: int
    data_bytes: int  # bytes of sample data present (at most what the header declares)

    @property
    def sample_width(self) -> int:
        """Bytes per sample."""
        return max(1, self.bits // 8)

    @property
    def frames(self) -> int:
        """Sample frames present."""
        return self.data_bytes // (self.channels * self.sample_width)

    @property
    def duration(self) -> float:
        """Seconds of audio present."""
        return self.frames / self.sampling_rate

    def is_pcm16_mono(self, sampling_rate: int) -> bool:
        """Whether this is 16-bit mono PCM at `sampling_rate` (the segment cache's format)."""
        return (self.format_tag, self.channels, self.sampling_rate, self.bits) == (
            FORMAT_PCM,
            1,
            sampling_rate,
            16,
        )


def parse(data: bytes) -> WavInfo:
    """The header of the WAV file `data`; WavError if it is malformed or its samples cut short."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise WavError("WAV audio does not start with a RIFF/WAVE header")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise WavError("WAV fmt chunk is cut short")
            tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from(
                "<HHIIHH", data, body
            )
            if tag == _FORMAT_EXTENSIBLE and size >= 40 and body + 26 <= len(data):
                (tag,) = struct.unpack_from("<H", data, body + 24)  # the sub-format GUID
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise WavError("WAV data chunk comes before its fmt chunk")
            tag, channels, rate, bits = fmt
            width = max(1, bits // 8)
            present = len(data) - body
            if size not in UNKNOWN_SIZES:
                if present < size:
                    raise WavError(f"WAV data is cut short: {present} of {size} bytes")
                present = size
            if channels < 1 or rate < 1 or present % (channels * width):
                raise WavError("WAV data ends inside a sample frame")
            return WavInfo(tag, channels, rate, bits, body, present)
        pos = body + size + (size & 1)  # chunks are padded to an even size
    raise WavError("WAV audio has no data chunk")


def _fmt_chunk(tag: int, rate: int, bits: int, extra: bytes = b"") -> bytes:
    width = bits // 8
    body = struct.pack("<HHIIHH", tag, 1, rate, rate * width, width, bits) + extra
    return b"fmt " + struct.pack("<I", len(body)) + body


def cache_header(sampling_rate: int, data_bytes: int) -> bytes:
    """The canonical 44-byte header of 16-bit mono PCM: the segment cache's format."""
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + _fmt_chunk(FORMAT_PCM, sampling_rate, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def pcm16_header(sampling_rate: int, data_bytes: int) -> bytes:
    """The header of a 16-bit mono PCM output, as ffmpeg lays it out (RF64 past 4 GiB)."""
    fmt = _fmt_chunk(FORMAT_PCM, sampling_rate, 16)
    header_bytes = 12 + len(fmt) + 8 + _JUNK_BYTES + 8
    riff_size = header_bytes - 8 + data_bytes
    if riff_size <= _U32_MAX:
        junk = b"JUNK" + struct.pack("<I", _JUNK_BYTES) + bytes(_JUNK_BYTES)
        return (
            b"RIFF"
            + struct.pack("<I", riff_size)
            + b"WAVE"
            + fmt
            + junk
            + b"data"
            + struct.pack("<I", data_bytes)
        )
    ds64 = b"ds64" + struct.pack("<IQQQI", _JUNK_BYTES, riff_size, data_bytes, data_bytes // 2, 0)
    return (
        b"RF64"
        + struct.pack("<I", _U32_MAX)
        + b"WAVE"
        + fmt
        + ds64
        + b"data"
        + struct.pack("<I", _U32_MAX)
    )


def mulaw_header(sampling_rate: int, samples: int) -> bytes:
    """The header of a G.711 mu-law output (one byte a sample), as ffmpeg lays it out.

    The writer adds the pad byte after an odd number of samples (see `pad_bytes`).
    """
    fmt = _fmt_chunk(FORMAT_MULAW, sampling_rate, 8, extra=struct.pack("<H", 0))
    # ffmpeg counts one sample in the fact chunk of an empty file; so do we, to match it.
    fact = b"fact" + struct.pack("<II", 4, max(samples, 1))
    # An odd data chunk is followed by a pad byte, which the RIFF size counts.
    riff_size = 4 + len(fmt) + len(fact) + 8 + samples + (samples & 1)
    if riff_size > _U32_MAX:
        raise WavError(f"{samples} mu-law samples do not fit in a WAV file")
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + fmt
        + fact
        + b"data"
        + struct.pack("<I", samples)
    )
