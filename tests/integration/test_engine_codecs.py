"""The engine's encoders and resampler: invariants over arbitrary PCM."""

from __future__ import annotations

import asyncio
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from rime_local.codecs import (
    MulawEncoder,
    WavEncoder,
    nearest_mp3_rate,
    streaming_wav_header,
)
from rime_local.synthesis import Resampler

pcm_chunks = st.lists(
    st.lists(st.integers(-32768, 32767), max_size=300).map(
        lambda samples: struct.pack(f"<{len(samples)}h", *samples)
    ),
    max_size=6,
)


async def _encode(encoder: WavEncoder | MulawEncoder, chunks: list[bytes]) -> bytes:
    out = b""
    for chunk in chunks:
        out += await encoder.push(chunk)
    return out + await encoder.finish()


@given(pcm_chunks, st.sampled_from([8000, 16000, 22050, 44100]))
def test_streamed_wav_is_header_then_the_samples(chunks: list[bytes], rate: int) -> None:
    data = asyncio.run(_encode(WavEncoder(rate), chunks))
    assert data[:44] == streaming_wav_header(rate)
    assert data[44:] == b"".join(chunks)
    assert struct.unpack("<I", data[24:28]) == (rate,)


@given(pcm_chunks)
def test_mulaw_is_one_byte_per_sample(chunks: list[bytes]) -> None:
    data = asyncio.run(_encode(MulawEncoder(), chunks))
    assert len(data) == sum(len(c) for c in chunks) // 2


@settings(max_examples=50)
@given(pcm_chunks, st.sampled_from([(22050, 8000), (22050, 16000), (22050, 44100)]))
def test_resampling_in_chunks_equals_resampling_at_once(
    chunks: list[bytes], rates: tuple[int, int]
) -> None:
    streamed = Resampler(*rates)
    whole = Resampler(*rates)
    pieces = b"".join(streamed.convert(c) for c in chunks)
    assert pieces == whole.convert(b"".join(chunks))
    samples_in = sum(len(c) for c in chunks) // 2
    expected = samples_in * rates[1] / rates[0]
    assert abs(len(pieces) // 2 - expected) <= 2


@given(st.integers(4000, 96000))
def test_mp3_rate_is_a_real_mp3_rate_near_the_request(rate: int) -> None:
    mp3_rates = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
    chosen = nearest_mp3_rate(rate)
    assert chosen in mp3_rates
    assert all(abs(chosen - rate) <= abs(r - rate) for r in mp3_rates)
