"""The console's peak strip and loudness of a take: levels per stretch, clipping marked."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service.peaks import BUCKETS, CLIP_DB, FLOOR_DB, Analysis, bucket_peaks, strip_svg

samples = arrays(
    np.float32,
    st.integers(0, 5000),
    elements=st.floats(-1.0, 1.0, width=32, allow_nan=False),
)


@given(samples)
@settings(max_examples=200, deadline=None)
def test_every_bucket_is_a_level_between_the_floor_and_full_scale(audio: np.ndarray) -> None:
    peaks = bucket_peaks(audio)
    assert len(peaks) == BUCKETS
    assert all(FLOOR_DB <= p <= 0.0 for p in peaks)
    if audio.size:
        top = float(np.abs(audio).max())
        expected = max(FLOOR_DB, 20 * np.log10(top)) if top > 0 else FLOOR_DB
        # The loudest bucket is the whole take's peak.
        assert abs(max(peaks) - expected) < 0.01


@given(st.integers(0, BUCKETS - 1), st.integers(BUCKETS * 10, BUCKETS * 40))
@settings(max_examples=50, deadline=None)
def test_a_click_shows_in_its_own_stretch(where: int, length: int) -> None:
    audio = np.full(length, 0.01, dtype=np.float32)
    edges = np.linspace(0, length, BUCKETS + 1).astype(np.int64)
    audio[(edges[where] + edges[where + 1]) // 2] = 1.0
    peaks = bucket_peaks(audio)
    assert peaks[where] == 0.0
    assert all(abs(p - -40.0) < 0.01 for i, p in enumerate(peaks) if i != where)


def test_clipped_stretches_are_drawn_red_and_silence_as_a_line() -> None:
    levels = (0.0, -20.0, FLOOR_DB, CLIP_DB)
    svg = strip_svg(Analysis(levels, -20.0, 0.0, 2))
    assert svg.startswith("<svg") and svg.count("<rect") == 1 + len(levels)
    assert svg.count("#c0392b") == 2  # the two at or above CLIP_DB
    assert 'height="1.00"' in svg  # silence: a one-pixel line, not nothing
