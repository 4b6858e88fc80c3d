"""MPEG-1/2 Layer III frame headers: the bitrate of every frame of an MP3 file.

Whether a file is constant bitrate is read from the frames themselves rather than from an
encoder's tag (a Xing or Info frame says what the encoder meant, not what it wrote).
"""

from __future__ import annotations

from dataclasses import dataclass

_BITRATES = {  # kbps by bitrate index, Layer III
    "1": (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    "2": (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_TAGS = (b"Xing", b"Info")  # the encoder's summary frame: no audio, not counted


@dataclass(frozen=True)
class Mp3Frames:
    """The audio frames' bitrates (kbps), in file order."""

    bitrates: tuple[int, ...]

    @property
    def constant(self) -> bool:
        """Whether every audio frame has the same bitrate."""
        return len(set(self.bitrates)) == 1

    @property
    def kbps(self) -> int | None:
        """The bitrate when it is constant."""
        return self.bitrates[0] if self.constant else None


def _id3_length(data: bytes) -> int:
    if data[:3] != b"ID3" or len(data) < 10:
        return 0
    size = 0
    for byte in data[6:10]:
        size = (size << 7) | (byte & 0x7F)  # syncsafe
    footer = 10 if data[5] & 0x10 else 0
    return 10 + size + footer


def frame_bitrates(data: bytes) -> Mp3Frames:
    """Every Layer III frame's bitrate, from the first frame to the first byte out of step."""
    pos = _id3_length(data)
    found: list[int] = []
    while pos + 4 <= len(data):
        b1, b2 = data[pos + 1], data[pos + 2]
        version = (b1 >> 3) & 0x3
        if data[pos] != 0xFF or (b1 & 0xE0) != 0xE0 or version == 1 or (b1 >> 1) & 0x3 != 1:
            if not found:
                pos += 1  # junk before the first frame
                continue
            break
        index, rate_index = b2 >> 4, (b2 >> 2) & 0x3
        if index in (0, 15) or rate_index == 3:
            break
        kbps = _BITRATES["1" if version == 3 else "2"][index]
        rate = _RATES[version][rate_index]
        length = (144 if version == 3 else 72) * kbps * 1000 // rate + ((b2 >> 1) & 1)
        if not any(tag in data[pos + 4 : pos + 40] for tag in _TAGS):
            found.append(kbps)
        elif found:
            break
        pos += length
    return Mp3Frames(tuple(found))
