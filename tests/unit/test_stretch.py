"""The engine's time stretch (`timeScaleFactor`): exact lengths, chunking-proof, pitch kept."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rime_local.stretch import Stretcher, stretched_length

RATE = 22050


def stretch(pcm: bytes, factor: float, cuts: list[int]) -> bytes:
    """`pcm` stretched, fed in pieces cut at the sample indexes `cuts`."""
    stretcher = Stretcher(factor, RATE)
    out = b""
    start = 0
    for cut in [*sorted(cuts), len(pcm) // 2]:
        out += stretcher.feed(pcm[2 * start : 2 * cut])
        start = max(start, cut)
    return out + stretcher.finish()


audio = st.lists(st.integers(-32768, 32767), max_size=6000).map(
    lambda xs: np.array(xs, dtype="<i2").tobytes()
)


@settings(max_examples=60, deadline=None)
@given(audio, st.floats(0.4, 2.5), st.lists(st.integers(0, 6000), max_size=6))
def test_the_output_is_exactly_factor_times_as_long_however_the_input_is_cut(
    pcm: bytes, factor: float, cuts: list[int]
) -> None:
    samples = len(pcm) // 2
    whole = stretch(pcm, factor, [])
    assert len(whole) // 2 == stretched_length(samples, factor) == round(samples * factor)
    assert stretch(pcm, factor, [min(c, samples) for c in cuts]) == whole


@pytest.mark.parametrize("factor", [0.4, 0.8, 1.25, 2.5])
def test_a_tone_keeps_its_pitch_and_loudness(factor: float) -> None:
    t = np.arange(RATE) / RATE
    tone = (10000 * np.sin(2 * np.pi * 180 * t)).astype("<i2")
    out = np.frombuffer(stretch(tone.tobytes(), factor, [1000, 5000]), dtype="<i2")
    middle = out[len(out) // 8 : -len(out) // 8].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(middle))
    assert np.argmax(spectrum) * RATE / len(middle) == pytest.approx(180, rel=0.02)
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(10000 / np.sqrt(2), rel=0.05)
