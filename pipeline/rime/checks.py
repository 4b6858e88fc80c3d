"""Cheap checks on received audio: is it whole, and how long is it.

A stream that the transport reports as complete can still hold a cut-off file (a proxy that
ends the body cleanly, a server that died between frames). These checks walk the container
structure, without decoding, and raise StreamCut when the bytes cannot be a whole file.
"""

from __future__ import annotations

from pipeline import wav
from pipeline.rime.errors import StreamCut
from pipeline.rime.params import AudioFormat

PCM_SAMPLE_WIDTH = 2  # Rime's PCM is 16-bit little-endian mono


def parse_wav(data: bytes) -> wav.WavInfo:
    """The WAV header of `data`; StreamCut if it is malformed or the samples are cut short."""
    try:
        return wav.parse(data)
    except wav.WavError as exc:
        raise StreamCut(str(exc)) from exc


# MPEG audio frame header tables, for Layer III (what every MP3 encoder writes).
_MP3_BITRATES_V1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_BITRATES_V2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mp3_frame_length(header: bytes) -> int | None:
    """Bytes in the MPEG Layer III frame starting with `header`, or None if it isn't one."""
    b1, b2 = header[1], header[2]
    if header[0] != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version = (b1 >> 3) & 0x03  # 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5
    layer = (b1 >> 1) & 0x03  # 1 = Layer III
    bitrate_index = b2 >> 4
    rate_index = (b2 >> 2) & 0x03
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    padding = (b2 >> 1) & 0x01
    rate = _MP3_RATES[version][rate_index]
    if version == 3:
        return 144 * _MP3_BITRATES_V1[bitrate_index] * 1000 // rate + padding
    return 72 * _MP3_BITRATES_V2[bitrate_index] * 1000 // rate + padding


def mp3_frames(data: bytes) -> int:
    """Number of whole MPEG Layer III frames; StreamCut if the data is not a whole MP3."""
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        # ID3v2 size is four 7-bit bytes; a footer flag adds 10 more bytes.
        size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
        pos = 10 + size + (10 if data[5] & 0x10 else 0)
    end = len(data) - 128 if data[-128:-125] == b"TAG" else len(data)  # ID3v1 trailer
    frames = 0
    while pos < end:
        length = _mp3_frame_length(data[pos : pos + 4]) if pos + 4 <= end else None
        if length is None:
            raise StreamCut(f"MP3 audio has no whole frame header at byte {pos}")
        if pos + length > end:
            raise StreamCut(f"MP3 audio ends inside a frame at byte {pos}")
        pos += length
        frames += 1
    if frames == 0:
        raise StreamCut("MP3 audio holds no frames")
    return frames


def check_ogg(data: bytes) -> None:
    """StreamCut unless `data` is whole Ogg pages ending with an end-of-stream page."""
    pos = 0
    last_flags = 0
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS" or pos + 27 > len(data):
            raise StreamCut(f"Ogg audio has no page header at byte {pos}")
        last_flags = data[pos + 5]
        segments = data[pos + 26]
        table_end = pos + 27 + segments
        if table_end > len(data):
            raise StreamCut("Ogg page header is cut short")
        pos = table_end + sum(data[pos + 27 : table_end])
        if pos > len(data):
            raise StreamCut("Ogg audio ends inside a page")
    if not data or not last_flags & 0x04:
        raise StreamCut("Ogg audio ends without its end-of-stream page")


def check_audio(data: bytes, fmt: AudioFormat) -> None:
    """Raise StreamCut when `data` cannot be a whole file of `fmt`."""
    if not data:
        raise StreamCut(f"no {fmt.value} audio received")
    if fmt is AudioFormat.PCM:
        if len(data) % PCM_SAMPLE_WIDTH:
            raise StreamCut("PCM audio ends inside a sample")
    elif fmt is AudioFormat.WAV:
        parse_wav(data)
    elif fmt is AudioFormat.MP3:
        mp3_frames(data)
    elif fmt is AudioFormat.OGG_OPUS:
        check_ogg(data)
    elif fmt is AudioFormat.WEBM_OPUS and data[:4] != b"\x1a\x45\xdf\xa3":
        raise StreamCut("WebM audio does not start with an EBML header")
    # mu-law is one byte per sample: any length is whole.


def duration(data: bytes, fmt: AudioFormat, sampling_rate: int) -> float | None:
    """Seconds of audio for the uncompressed formats; None for compressed ones."""
    if fmt is AudioFormat.PCM:
        return len(data) // PCM_SAMPLE_WIDTH / sampling_rate
    if fmt is AudioFormat.MULAW:
        return len(data) / sampling_rate
    if fmt is AudioFormat.WAV:
        return parse_wav(data).duration
    return None
