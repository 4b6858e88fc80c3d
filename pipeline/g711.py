"""G.711 mu-law, encoded bit for bit as ffmpeg's `pcm_mulaw` encoder does, without ffmpeg.

ffmpeg does not truncate like the reference C code (and Python's audioop): it rounds each 14-bit
sample to the nearest mu-law level, with decision thresholds halfway between the levels'
decoded values. The table below is built the same way (libavcodec/pcm_tablegen.h), so an
output written here is byte for byte the one ffmpeg would write.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt

_BIAS = 0x84
_MASK = 0xFF  # mu-law bytes are stored inverted


def mulaw_to_linear(byte: int) -> int:
    """The 16-bit value a mu-law byte decodes to (the G.711 expansion)."""
    inverted = ~byte & 0xFF
    magnitude = (((inverted & 0x0F) << 3) + _BIAS) << ((inverted & 0x70) >> 4)
    return _BIAS - magnitude if inverted & 0x80 else magnitude - _BIAS


@cache
def _encode_table() -> npt.NDArray[np.uint8]:
    """Mu-law byte for every 14-bit sample (index: (sample + 32768) >> 2)."""
    table = np.zeros(16384, dtype=np.uint8)
    table[8192] = _MASK
    j = 1
    for level in range(127):
        low = mulaw_to_linear(level ^ _MASK)
        high = mulaw_to_linear((level + 1) ^ _MASK)
        threshold = (low + high + 4) >> 3
        while j < threshold:
            table[8192 - j] = level ^ (_MASK ^ 0x80)
            table[8192 + j] = level ^ _MASK
            j += 1
    while j < 8192:
        table[8192 - j] = 127 ^ (_MASK ^ 0x80)
        table[8192 + j] = 127 ^ _MASK
        j += 1
    table[0] = table[1]
    return table


def encode_mulaw(pcm: bytes) -> bytes:
    """Mu-law bytes (one a sample) of 16-bit little-endian mono PCM."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    encoded: npt.NDArray[np.uint8] = _encode_table()[(samples + 32768) >> 2]
    return encoded.tobytes()
