"""The pure loudness decisions, for any measurement: gain, limit, search steps, warnings."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.loudness import (
    MAX_LIMITING_DB,
    TRUE_PEAK_MARGIN_DB,
    WARN_MISS_LU,
    Leveling,
    Loudness,
    LoudnessRecord,
    farthest,
    first_leveling,
    held_limit,
    miss_warning,
    next_gain,
)
from pipeline.mp3 import frame_bitrates

lufs = st.floats(-70, -5)
peaks = st.floats(-60, 6)
targets = st.floats(-30, -10)
ceilings = st.floats(-9, 0)


@given(lufs, peaks, targets, ceilings)
def test_a_plain_gain_reaches_the_target_and_never_crosses_the_ceiling(
    level: float, peak: float, target: float, ceiling: float
) -> None:
    leveling = first_leveling(Loudness(level, peak), target, ceiling)
    if leveling.limit_dbtp is None:
        assert leveling.gain_db == pytest.approx(target - level)
        assert peak + leveling.gain_db <= ceiling - TRUE_PEAK_MARGIN_DB + 1e-9
    else:
        # The limiter is asked only when the plain gain would cross the ceiling, and holds it.
        assert peak + (target - level) > ceiling - TRUE_PEAK_MARGIN_DB
        assert leveling.limit_dbtp == pytest.approx(ceiling - TRUE_PEAK_MARGIN_DB)
        assert leveling.gain_db <= target - level + 1e-9
        # It never takes more than MAX_LIMITING_DB off the loudest peak.
        assert peak + leveling.gain_db - leveling.limit_dbtp <= MAX_LIMITING_DB + 1e-9
        assert leveling.max_gain_db == pytest.approx(leveling.limit_dbtp - peak + MAX_LIMITING_DB)


@given(targets, ceilings)
def test_silence_is_left_alone(target: float, ceiling: float) -> None:
    leveling = first_leveling(Loudness(None, None), target, ceiling)
    assert leveling.gain_db == 0.0 and leveling.limit_dbtp is None


@given(st.floats(0, 20), st.floats(0.01, 6), targets)
def test_one_step_moves_by_the_shortfall(gain: float, short: float, target: float) -> None:
    assert next_gain([(gain, target - short)], target) == pytest.approx(gain + short)


@given(st.floats(0, 10), st.floats(0.1, 4), st.floats(0.1, 1.0), st.floats(0, 1.5), targets)
def test_the_secant_lands_on_a_straight_curve(
    g0: float, step: float, slope: float, loss: float, target: float
) -> None:
    # Limited loudness rising by `slope` per dB of gain: the secant's next gain meets it.
    def curve(gain: float) -> float:
        return target - loss - 3 + slope * gain

    g1 = g0 + step
    nxt = next_gain([(g0, curve(g0)), (g1, curve(g1))], target)
    if slope >= 0.1:
        assert curve(nxt) == pytest.approx(target, abs=1e-6)
    assert nxt >= g1 or curve(g1) >= target


@given(lufs, targets)
def test_a_warning_exactly_when_the_target_is_missed_by_more_than_1_lu(
    level: float, target: float
) -> None:
    record = LoudnessRecord(target, -1.0, 0.0, False, level, 3.0, -2.0)
    warning = record.warning()
    assert (warning is not None) == (abs(level - target) > WARN_MISS_LU)
    if warning is not None:
        assert f"{target:g} LUFS" in warning


FORMATS = ("wav", "mp3", "wav-mulaw", "ogg", "mulaw")
figures = st.builds(Loudness, st.one_of(st.none(), lufs), st.one_of(st.none(), peaks))
outputs = st.lists(st.tuples(st.sampled_from(FORMATS), figures), min_size=1).map(dict)


@given(outputs, targets)
def test_each_output_is_judged_by_its_own_figures_and_named(
    measured: dict[str, Loudness], target: float
) -> None:
    for fmt, loudness in measured.items():
        warning = miss_warning(loudness, target, fmt)
        level = loudness.integrated_lufs
        assert (warning is not None) == (level is not None and abs(level - target) > WARN_MISS_LU)
        if warning is not None:
            assert warning.startswith(f"{fmt}: loudness {level:.1f} LUFS")
            assert f"target {target:g} LUFS" in warning


@given(outputs, targets)
def test_the_farthest_output_is_no_closer_than_any_other(
    measured: dict[str, Loudness], target: float
) -> None:
    def miss(loudness: Loudness) -> float:
        level = loudness.integrated_lufs
        return -1.0 if level is None else abs(level - target)

    chosen = farthest(measured, target)
    assert all(miss(measured[chosen]) >= miss(other) for other in measured.values())
    # It misses by more than 1 LU exactly when some output does: the record's own warning.
    record = LoudnessRecord(
        target,
        -1.0,
        0.0,
        False,
        measured[chosen].integrated_lufs,
        None,
        measured[chosen].true_peak_dbtp,
        chosen,
    )
    any_missed = any(miss_warning(o, target) is not None for o in measured.values())
    assert (record.warning() is not None) == any_missed


def test_silence_gets_no_warning() -> None:
    assert LoudnessRecord(-16.0, -1.0, 0.0, False, None, None, None).warning() is None
    assert math.isinf(first_leveling(Loudness(-20.0, None), -16.0, -1.0).max_gain_db)


def _frame(kbps_index: int, padding: int = 0) -> bytes:
    # MPEG-1 Layer III, 44.1 kHz, no CRC: 144 * bitrate / rate bytes (+ padding).
    kbps = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)[kbps_index]
    header = bytes([0xFF, 0xFB, (kbps_index << 4) | (padding << 1), 0xC4])
    length = 144 * kbps * 1000 // 44100 + padding
    return header + bytes(length - 4)


@given(st.lists(st.sampled_from([9, 11, 14]), min_size=1, max_size=30), st.binary(max_size=20))
def test_mp3_frames_are_read_back_whatever_their_bitrates(indexes: list[int], junk: bytes) -> None:
    table = {9: 128, 11: 192, 14: 320}
    id3 = b"ID3\x04\x00\x00\x00\x00\x00\x05" + b"\x00" * 5
    data = id3 + b"".join(_frame(i) for i in indexes) + b"TAG" + junk
    frames = frame_bitrates(data)
    assert frames.bitrates == tuple(table[i] for i in indexes)
    assert frames.constant == (len(set(indexes)) == 1)
    assert frames.kbps == (table[indexes[0]] if frames.constant else None)


@given(st.floats(0, 20), st.floats(-9, 0), st.floats(-3, 3))
def test_an_overshoot_measured_through_the_chain_is_taken_off_the_limit(
    gain: float, limit: float, over: float
) -> None:
    leveling = Leveling(gain, limit, gain + 5)
    held = held_limit(leveling, limit + over)
    assert held.gain_db == gain
    assert held.limit_dbtp is not None
    if over <= 0:
        assert held == leveling  # under the limit: nothing to take off
    else:
        assert held.limit_dbtp == pytest.approx(limit - over)
        assert held.max_gain_db == pytest.approx(gain + 5 + over)
    assert held_limit(Leveling(gain), 0.0) == Leveling(gain)
