"""Properties of stitching over random segment lengths, paddings and pauses."""

from __future__ import annotations

import hashlib
import itertools
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.audio import decode
from pipeline.plan import OutputSpec
from pipeline.stitch import Part, Placement, StitchSpec, render, split_keeps, stitch
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


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts)
def test_placements_say_where_each_segments_samples_landed(
    script: tuple[int, list[tuple[int, int, int, int]]],
) -> None:
    """Each placement is checked against the programme itself: the samples it names are the
    part's own samples (inside the fades), and a time in the part maps onto its sample."""
    lead, segments = script
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        parts = _write(folder, segments)
        spec = StitchSpec(RATE, folder / "out", "s", OutputSpec(("wav",)), lead_pause_ms=lead)
        placements: list[Placement] = []
        programme = np.concatenate(
            [np.zeros(0, np.float32), *render(parts, spec, placements.append)]
        )

    speaking = [i for i, s in enumerate(segments) if s[0] > 0]
    assert [p.part for p in placements] == speaking
    fade = round(spec.fade_ms * RATE / 1000)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sources = _write(folder, segments)
        for p in placements:
            source = decode(sources[p.part].path, RATE)
            inner = slice(fade, p.length - fade)
            placed = programme[p.programme_start : p.programme_start + p.length][inner]
            own = source[p.source_start : p.source_start + p.length][inner]
            np.testing.assert_array_equal(placed, own)
            # A time in the part's own audio, as seconds, finds the same sample in the programme.
            for x in range(p.source_start + fade, p.source_start + p.length - fade, 97):
                at = round(p.programme_seconds(x / RATE) * RATE)
                assert programme[at] == source[x]
    # Placements never overlap and run in programme order.
    for a, b in itertools.pairwise(placements):
        assert a.programme_start + a.length <= b.programme_start


def test_a_time_in_trimmed_silence_lands_on_the_kept_edge() -> None:
    placement = Placement(part=0, source_start=800, programme_start=16000, length=1600, rate=RATE)
    assert placement.programme_seconds(0.0) == 1.0  # before the kept samples: their start
    assert placement.programme_seconds(0.06) == (16000 + 160) / RATE
    assert placement.programme_seconds(9.0) == (16000 + 1600) / RATE  # past them: their end
