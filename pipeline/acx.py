"""ACX's audio submission rules (Audible's audiobook exchange), and a file judged by them.

The rules, as ACX publishes them: RMS between -23 and -18 dB, peaks no higher than -3 dB, a
noise floor no higher than -60 dB RMS, MP3 at 192 kbps or more, constant bitrate, 44.1 kHz,
0.5 to 1 second of room tone at the head of each file and 1 to 5 seconds at the tail, at most
120 minutes a file. The `acx` preset's numbers are chosen here, next to the rules they meet.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.loudness import FileFigures

RMS_RANGE_DB = (-23.0, -18.0)
MAX_PEAK_DBFS = -3.0
MAX_NOISE_FLOOR_DB = -60.0
SAMPLE_RATE = 44100
MIN_MP3_KBPS = 192
HEAD_RANGE_SECONDS = (0.5, 1.0)
TAIL_RANGE_SECONDS = (1.0, 5.0)
MAX_MINUTES = 120.0

# The preset. Engine speech measures 0.3 to 0.8 dB lower as whole-file RMS than as integrated
# loudness (its pauses count in RMS, and are gated out of LUFS), and LAME takes a little more
# off: -20 LUFS comes out at -20.8 to -21.0 dB RMS in the MP3, the middle of ACX's range.
TARGET_LUFS = -20.0
# Half a dB under the peak rule: an MP3 decodes with peaks a little off the PCM's.
CEILING_DBTP = -3.5
LEAD_PAUSE_MS = 750
TAIL_PAUSE_MS = 2000


@dataclass(frozen=True)
class Finding:
    """One figure of a file against one ACX rule."""

    figure: str  # e.g. "RMS"
    shown: str  # the measured value, formatted
    rule: str  # e.g. "-23 to -18 dB"
    passed: bool


def _db(value: float | None) -> str:
    return "silent" if value is None else f"{value:.1f} dB"


def _within(value: float | None, low: float, high: float) -> bool:
    return value is not None and low <= value <= high


def _at_most(value: float | None, limit: float) -> bool:
    return value is None or value <= limit  # digital silence is below any limit


def judge(figures: FileFigures) -> list[Finding]:
    """Every ACX rule, with the file's figure and whether it passes."""
    lo, hi = RMS_RANGE_DB
    head_lo, head_hi = HEAD_RANGE_SECONDS
    tail_lo, tail_hi = TAIL_RANGE_SECONDS
    found = [
        Finding(
            "RMS", _db(figures.rms_db), f"{lo:g} to {hi:g} dB", _within(figures.rms_db, lo, hi)
        ),
        Finding(
            "peak",
            _db(figures.sample_peak_db),
            f"at most {MAX_PEAK_DBFS:g} dB",
            _at_most(figures.sample_peak_db, MAX_PEAK_DBFS),
        ),
        Finding(
            "noise floor",
            _db(figures.noise_floor_db),
            f"at most {MAX_NOISE_FLOOR_DB:g} dB",
            _at_most(figures.noise_floor_db, MAX_NOISE_FLOOR_DB),
        ),
        Finding(
            "sample rate",
            f"{figures.sample_rate} Hz",
            f"{SAMPLE_RATE} Hz",
            figures.sample_rate == SAMPLE_RATE,
        ),
        Finding("format", figures.codec, "mp3", figures.codec == "mp3"),
    ]
    if figures.codec == "mp3":
        kbps = figures.bitrate_kbps
        found.append(
            Finding(
                "bitrate",
                "variable" if not figures.constant_bitrate else f"{kbps} kbps CBR",
                f"at least {MIN_MP3_KBPS} kbps, constant",
                bool(figures.constant_bitrate) and kbps is not None and kbps >= MIN_MP3_KBPS,
            )
        )
    found += [
        Finding(
            "head room tone",
            f"{figures.head_silence_seconds:.2f} s",
            f"{head_lo:g} to {head_hi:g} s",
            head_lo <= figures.head_silence_seconds <= head_hi,
        ),
        Finding(
            "tail room tone",
            f"{figures.tail_silence_seconds:.2f} s",
            f"{tail_lo:g} to {tail_hi:g} s",
            tail_lo <= figures.tail_silence_seconds <= tail_hi,
        ),
        Finding(
            "length",
            f"{figures.duration_seconds / 60:.1f} min",
            f"at most {MAX_MINUTES:g} min",
            figures.duration_seconds <= MAX_MINUTES * 60,
        ),
    ]
    return found
