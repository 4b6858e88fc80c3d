"""Properties of stitching over random segment lengths, paddings and pauses."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.plan import OutputSpec
from pipeline.stitch import Part, StitchSpec, render, split_keeps, stitch
from tests.unit.test_stitch import decode_file, noise, padded, silence, silent_runs, tone, write_wav

RATE = 16000

# A pause is none or clearly longer than the gaps of a waveform, so every one can be measured.
pause = st.one_of(st.just(0), st.integers(20, 900))
# (speech ms, 0 for an all-silent segment; head padding ms; tail padding ms; pause after ms)
segment = st.tuples(
    st.one_of(st.just(0), st.integers(30, 600)), st.integers(0, 80), st.integers(0, 80), pause
)
scripts = st.tuples(pause, st.lists(segment, min_size=1, max_size=6))


def _write(folder: Path, segments: list[tuple[int, int, int, int]]) -> list[Part]:
    parts = []
    for i, (speech, head, tail, pause) in enumerate(segments):
        if speech == 0:
            body = silence(head + tail + 50, RATE)
        elif i % 2:
            body = padded(noise(speech, rate=RATE, seed=i), head, tail, RATE)
        else:
            body = padded(tone(speech, rate=RATE, freq=300 + 100 * i), head, tail, RATE)
        parts.append(Part(write_wav(folder / f"{i}.wav", body, RATE), pause))
    return parts


def _expected_gaps(lead: int, segments: list[tuple[int, int, int, int]]) -> list[int]:
    """Requested silence before, between and after the speech, pauses of silent segments merged."""
    gaps = [lead]
    for speech, _, _, pause in segments:
        if speech:
            gaps.append(0)
        gaps[-1] += pause
    return gaps


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts)
def test_output_is_speech_plus_pauses_with_measured_gaps(
    script: tuple[int, list[tuple[int, int, int, int]]],
) -> None:
    lead, segments = script
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        parts = _write(folder, segments)
        out = StitchSpec(RATE, folder / "out", "s", OutputSpec(("wav",)), lead_pause_ms=lead)
        result = stitch(parts, out)
        pcm = decode_file(result.files["wav"].path, RATE)

        speech_ms = sum(s[0] for s in segments)
        expected = lead + speech_ms + sum(s[3] for s in segments)
        assert abs(len(pcm) * 1000 / RATE - expected) <= 3
        assert len(pcm) == result.samples

        # Every requested silence is found in the output within 10 ms, in order; a 0 ms
        # pause joins the speech with no gap.
        gaps = _expected_gaps(lead, segments)
        wanted = [g for g in gaps if g > 0]
        found = [length for _, length in silent_runs(pcm, RATE, min_ms=10)]
        if speech_ms == 0:
            assert not pcm.any()
        else:
            assert len(found) == len(wanted), (found, gaps)
            for got, want in zip(found, wanted, strict=True):
                assert abs(got - want) <= 10, (found, gaps)

        # The same inputs give the same bytes.
        again = stitch(parts, StitchSpec(RATE, folder / "again", "s", out.output, lead))
        assert again.files["wav"].sha256 == result.files["wav"].sha256
        assert hashlib.sha256(result.files["wav"].path.read_bytes()).hexdigest() == (
            result.files["wav"].sha256
        )


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 300),
    st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 40), st.integers(0, 40), st.integers(0, 500)),
        min_size=1,
        max_size=5,
    ),
)
def test_render_length_is_exact_in_samples(
    lead: int, segments: list[tuple[int, int, int, int]]
) -> None:
    # A square wave is loud in every sample, so each segment's speech span is known exactly.
    with tempfile.TemporaryDirectory() as tmp:
        parts = []
        for i, (speech, head, tail, pause) in enumerate(segments):
            n = round(speech * RATE / 1000)
            body = np.concatenate([np.zeros(head), 0.25 * (-1.0) ** np.arange(n), np.zeros(tail)])
            parts.append(Part(write_wav(Path(tmp) / f"{i}.wav", body, RATE), pause))
        out = StitchSpec(RATE, Path(tmp), "s", OutputSpec(("wav",)), lead_pause_ms=lead)
        total = sum(len(chunk) for chunk in render(parts, out))
        expected = round(lead * RATE / 1000) + sum(
            round(s[0] * RATE / 1000) + round(s[3] * RATE / 1000) for s in segments
        )
        assert total == expected


@given(st.integers(0, 10_000), st.integers(0, 500), st.integers(0, 500), st.integers(0, 300))
def test_split_keeps_fits_the_pause_and_the_room(
    pause: int, tail_room: int, head_room: int, keep: int
) -> None:
    tail, head = split_keeps(pause, tail_room, head_room, keep)
    assert 0 <= tail <= min(keep, tail_room)
    assert 0 <= head <= min(keep, head_room)
    assert tail + head <= pause
    # Nothing is given up without need: either both keeps are whole or the pause is used up.
    assert (tail, head) == (min(keep, tail_room), min(keep, head_room)) or tail + head == pause
