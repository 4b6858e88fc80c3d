"""Loudness decisions: the gain that meets a target, and when a true-peak limiter must help.

Pure arithmetic over measurements (`pipeline.audio` measures with ffmpeg's ebur128). A plain
gain moves integrated loudness and true peak by exactly the gain, so when the target's peak
stays under the ceiling one gain is the whole answer. When it does not, the gain that meets the
target is applied anyway and a limiter holds the peaks at the ceiling; limiting takes a little
loudness away (more the harder it works), so the gain is found by measuring the limited
programme and stepping towards the target (`next_gain`), a secant search over a smooth,
increasing curve; the first step's peak, measured through the whole chain, lowers the limit by
any overshoot (`held_limit`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# ebur128 reports true peak to 0.1 dB and requantizing after the gain can add a hair more.
TRUE_PEAK_MARGIN_DB = 0.1
# The target is met when the limited programme measures within this of it (the promise is
# 0.5 LU; the rest is left for the codecs).
SEARCH_TOLERANCE_LU = 0.2
# Measuring passes spent on the limited gain at most; typical speech needs one or two.
MAX_SEARCH_STEPS = 3
# A measured programme further than this from its target is a warning on the script.
WARN_MISS_LU = 1.0
# The limiter takes at most this off the loudest peak: past it speech audibly flattens, so a
# target that needs more (a click in near silence) is missed, and the warning says so.
MAX_LIMITING_DB = 10.0


@dataclass(frozen=True)
class Loudness:
    """An EBU R128 measurement of a whole programme; None where it is silent."""

    integrated_lufs: float | None
    true_peak_dbtp: float | None
    range_lu: float | None = None


@dataclass(frozen=True)
class Leveling:
    """How a programme is brought to its target: one gain, and a limit when peaks need one."""

    gain_db: float
    limit_dbtp: float | None = None  # the limiter's ceiling; None: a plain gain
    max_gain_db: float = math.inf  # the most gain the limiter may be asked to hold


@dataclass(frozen=True)
class LoudnessRecord:
    """What normalization asked for, what it did, and what the script's outputs measure: the
    figures of the output furthest from the target (`format`; see `farthest`)."""

    target_lufs: float
    ceiling_dbtp: float
    gain_db: float
    limited: bool
    integrated_lufs: float | None
    range_lu: float | None
    true_peak_dbtp: float | None
    # The output the figures are of; None in records made before each output was measured,
    # whose figures are of the programme every output was encoded from.
    format: str | None = None

    @property
    def missed_by_lu(self) -> float | None:
        """How far the measured loudness is from the target (None for silence)."""
        return missed_by_lu(self.integrated_lufs, self.target_lufs)

    def warning(self) -> str | None:
        """The warning when these figures miss the target by more than `WARN_MISS_LU`."""
        figures = Loudness(self.integrated_lufs, self.true_peak_dbtp, self.range_lu)
        return miss_warning(figures, self.target_lufs, self.format)


def missed_by_lu(lufs: float | None, target_lufs: float) -> float | None:
    """How far a measured loudness is from the target (None for silence)."""
    return None if lufs is None else abs(lufs - target_lufs)


def miss_warning(measured: Loudness, target_lufs: float, output: str | None = None) -> str | None:
    """A warning when `measured` misses the target by more than `WARN_MISS_LU`, naming the
    `output` (a format) when given; None when it does not (or is silent)."""
    missed = missed_by_lu(measured.integrated_lufs, target_lufs)
    if missed is None or missed <= WARN_MISS_LU:
        return None
    of = "" if output is None else f"{output}: "
    return (
        f"{of}loudness {measured.integrated_lufs:.1f} LUFS misses the target "
        f"{target_lufs:g} LUFS by {missed:.1f} LU"
    )


def farthest(outputs: Mapping[str, Loudness], target_lufs: float) -> str:
    """The output furthest from the target (the higher true peak breaks a tie; silence is never
    further than a measured output), the first one when they all agree."""

    def distance(fmt: str) -> tuple[float, float]:
        figures = outputs[fmt]
        missed = missed_by_lu(figures.integrated_lufs, target_lufs)
        peak = figures.true_peak_dbtp
        return (-1.0 if missed is None else missed, -math.inf if peak is None else peak)

    return max(outputs, key=distance)


def peak_cap_db(measured: Loudness, ceiling_dbtp: float) -> float:
    """The largest plain gain that keeps the measured true peak under the ceiling."""
    if measured.true_peak_dbtp is None:
        return math.inf
    return ceiling_dbtp - TRUE_PEAK_MARGIN_DB - measured.true_peak_dbtp


def plain_gain_db(measured: Loudness, target_lufs: float) -> float:
    """The gain that moves the measured loudness onto the target (0 for silence)."""
    if measured.integrated_lufs is None:
        return 0.0
    return target_lufs - measured.integrated_lufs


def first_leveling(measured: Loudness, target_lufs: float, ceiling_dbtp: float) -> Leveling:
    """A plain gain when it reaches the target under the ceiling, else the same gain limited."""
    gain = plain_gain_db(measured, target_lufs)
    cap = peak_cap_db(measured, ceiling_dbtp)
    if gain <= cap:
        return Leveling(gain)
    most = cap + MAX_LIMITING_DB
    return Leveling(min(gain, most), ceiling_dbtp - TRUE_PEAK_MARGIN_DB, most)


def next_gain(tried: list[tuple[float, float]], target_lufs: float) -> float:
    """The next gain to try, from (gain, measured LUFS) pairs of the limited programme so far.

    One pair: move by the shortfall (limiting only ever takes loudness away, so the step is at
    least as large as the miss). Two or more: the secant through the last two, kept from
    stepping back or overshooting wildly where the curve flattens.
    """
    gain, lufs = tried[-1]
    miss = target_lufs - lufs
    if len(tried) < 2:
        return gain + miss
    (g0, l0), (g1, l1) = tried[-2], tried[-1]
    slope = (l1 - l0) / (g1 - g0) if g1 != g0 else 1.0
    # Loudness rises with gain, by at most the gain itself; a flat or odd slope is clamped.
    slope = min(1.0, max(slope, 0.1))
    return g1 + miss / slope


def held_limit(leveling: Leveling, true_peak_dbtp: float | None) -> Leveling:
    """`leveling` with its limit lowered by what the limited programme measured over it.

    The limiter holds its oversampled signal; resampling back to the programme's rate
    reshapes the flattened peaks, and noise-like material comes out a few tenths of a dB over
    (speech hardly does). Measured once through the full chain, that overshoot is taken off.
    """
    if leveling.limit_dbtp is None or true_peak_dbtp is None:
        return leveling
    over = true_peak_dbtp - leveling.limit_dbtp
    if over <= 0:
        return leveling
    return Leveling(leveling.gain_db, leveling.limit_dbtp - over, leveling.max_gain_db + over)


def met(lufs: float | None, target_lufs: float) -> bool:
    """Whether a limited measurement is close enough to stop searching."""
    return lufs is None or abs(lufs - target_lufs) <= SEARCH_TOLERANCE_LU


@dataclass(frozen=True)
class FileFigures:
    """What `rime-batch check` measures of one audio file (levels in dBFS, None: silent)."""

    codec: str
    sample_rate: int
    channels: int
    duration_seconds: float
    loudness: Loudness
    rms_db: float | None  # RMS over the whole file
    sample_peak_db: float | None
    noise_floor_db: float | None  # RMS of the quietest window (see pipeline.analysis)
    head_silence_seconds: float  # before the first window above the room-tone threshold
    tail_silence_seconds: float  # after the last one
    bitrate_kbps: int | None = None  # MP3: the frames' bitrate when they all share it
    constant_bitrate: bool | None = None  # MP3 only: every frame at one bitrate
