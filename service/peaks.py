"""A take's peak strip and loudness, for a reviewer to spot a bad take at a glance: clipping,
a silent stretch, a take far louder or quieter than its neighbours.

Computed on the server from the output file itself (decoded by ffmpeg, measured by the same
EBU R128 code the stitcher uses) and kept in memory by the output's SHA-256: an output never
changes under its checksum, so an entry never goes stale. The strip is a small SVG.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

# Decoded at a low rate: peaks of speech at this width need no more.
ANALYSIS_RATE = 8000
BUCKETS = 120
# dBFS shown at the strip's foot; quieter is drawn as silence.
FLOOR_DB = -60.0
# A bucket whose peak reaches this is marked as clipping.
CLIP_DB = -0.1
CACHE_ENTRIES = 4096


@dataclass(frozen=True)
class Analysis:
    """Per-bucket peak levels (dBFS) of one output, its loudness and how much is clipped."""

    peaks_db: tuple[float, ...]
    integrated_lufs: float | None
    peak_dbfs: float | None
    clipped_buckets: int


def bucket_peaks(samples: npt.NDArray[np.float32], buckets: int = BUCKETS) -> tuple[float, ...]:
    """The peak level in dBFS of each of `buckets` equal stretches (at least FLOOR_DB)."""
    if samples.size == 0:
        return (FLOOR_DB,) * buckets
    edges = np.linspace(0, samples.size, buckets + 1).astype(np.int64)
    magnitude = np.abs(samples)
    out = []
    for start, end in itertools.pairwise(edges):
        peak = float(magnitude[start:end].max()) if end > start else 0.0
        level = 20 * np.log10(peak) if peak > 0 else FLOOR_DB
        out.append(round(max(FLOOR_DB, min(0.0, float(level))), 2))
    return tuple(out)


def analyse_samples(samples: npt.NDArray[np.float32], rate: int) -> Analysis:
    """The analysis of decoded mono samples."""
    from pipeline.audio import measure_loudness

    peaks = bucket_peaks(samples)
    loudness = measure_loudness([samples], rate) if samples.size else None
    top = float(np.abs(samples).max()) if samples.size else 0.0
    return Analysis(
        peaks_db=peaks,
        integrated_lufs=None if loudness is None else loudness.integrated_lufs,
        peak_dbfs=round(20 * float(np.log10(top)), 2) if top > 0 else None,
        clipped_buckets=sum(1 for p in peaks if p >= CLIP_DB),
    )


def strip_svg(analysis: Analysis, width: int = 240, height: int = 32) -> str:
    """A bar per bucket, its height the bucket's peak above FLOOR_DB; clipped bars in red."""
    n = len(analysis.peaks_db)
    step = width / n
    bars = []
    for i, level in enumerate(analysis.peaks_db):
        h = max(1.0, (level - FLOOR_DB) / -FLOOR_DB * height)
        fill = "#c0392b" if level >= CLIP_DB else "#2c6e9b"
        x, y, w = i * step, (height - h) / 2, max(step - 0.5, 0.5)
        bars.append(
            f'<rect x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}" fill="{fill}"/>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" preserveAspectRatio="none">'
        f'<rect width="{width}" height="{height}" fill="#f3f5f7"/>{"".join(bars)}</svg>'
    )


class PeakCache:
    """Analyses by output checksum, the least recently used dropped past CACHE_ENTRIES."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self._entries = entries
        self._found: OrderedDict[str, Analysis] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str, uri: str, destination: str) -> Analysis:
        """The analysis of the output at `uri` (in the job's `destination`), computed once."""
        with self._lock:
            found = self._found.get(sha256)
            if found is not None:
                self._found.move_to_end(sha256)
                return found
        analysis = _analyse_uri(uri, destination)
        with self._lock:
            self._found[sha256] = analysis
            while len(self._found) > self._entries:
                self._found.popitem(last=False)
        return analysis

    def peek(self, sha256: str) -> Analysis | None:
        """The analysis if it was computed already, else None (nothing is computed)."""
        with self._lock:
            return self._found.get(sha256)

    def __len__(self) -> int:
        return len(self._found)


def _analyse_uri(uri: str, destination: str) -> Analysis:
    from pipeline.audio import decode

    if not uri.startswith("s3://"):
        return analyse_samples(decode(Path(uri), ANALYSIS_RATE), ANALYSIS_RATE)
    from pipeline.storage import open_store, parse_s3_uri
    from pipeline.storage.s3 import S3Store

    store = open_store(destination)
    bucket, key = parse_s3_uri(uri)
    if not isinstance(store, S3Store) or bucket != store.bucket or not key.startswith(store.prefix):
        raise ValueError("the output is not in the job's destination")
    relative = key[len(store.prefix) :].lstrip("/")
    with tempfile.TemporaryDirectory(prefix="rime-batch-peaks-") as scratch:
        local = store.get_to_file(relative, Path(scratch) / Path(relative).name)
        return analyse_samples(decode(local, ANALYSIS_RATE), ANALYSIS_RATE)
