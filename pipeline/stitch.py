"""Stitching: a script's segment files in order, trimmed, paused, faded, normalized, encoded.

The timeline rule. Each segment's speech runs from its first to its last sample at or above
the silence threshold (-50 dBFS by default); everything outside is trimmed, except a small
keep (10 ms) either side so soft word edges survive. The requested pause is the silence
*between speech*, keeps included: a 300 ms pause inserts 280 ms of digital silence between
two 10 ms keeps, and a pause shorter than two keeps shrinks the keeps. So the programme lasts
exactly lead pause + every segment's speech + every pause_after_ms (the last segment's too),
and a segment that is all silence contributes only its pause. Every join gets a short fade
(5 ms) in and out so a cut through low-level noise cannot click. `render` reports where each
part's kept samples land in the programme (a `Placement`), so anything timed against a segment
(its word timestamps) is moved by the same arithmetic that placed its audio.

Memory is bounded by two segments: segments are decoded one at a time, with one segment of
look-ahead because the keep after a segment depends on the head room of the next. Loudness
normalization measures the whole programme in a first streaming pass (EBU R128 integrated
loudness and true peak) and applies one linear gain in the last. When that gain would push the
true peak over the ceiling, the gain is applied anyway and a true-peak limiter (with its delay
compensated, so no sample moves) holds the peaks; the gain is then found by measuring the
limited programme (`pipeline.loudness`). The encoding pass measures every file it writes (a
WAV by the samples it holds, any other format by decoding what its encoder made), so each
output's figures are its own, measured, not derived. There is no per-segment processing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.audio import (
    AudioError,
    Samples,
    decode,
    encode,
    leveling_filter,
    measure_loudness,
    to_pcm16,
)
from pipeline.files import sha256_file
from pipeline.loudness import (
    MAX_SEARCH_STEPS,
    Leveling,
    Loudness,
    LoudnessRecord,
    farthest,
    first_leveling,
    held_limit,
    met,
    miss_warning,
    next_gain,
)
from pipeline.plan import OutputSpec, PlannedSegment, ScriptPlan
from pipeline.storage import OUTPUT_EXTENSIONS

SILENCE_THRESHOLD_DBFS = -50.0  # below any speech, above a clean TTS noise floor
KEEP_MS = 10  # kept either side of the speech so soft consonants are not clipped
FADE_MS = 5  # long enough to hide a cut, short enough not to touch the speech
_SILENCE_CHUNK_SECONDS = 1  # a long pause is written in pieces, never allocated whole


@dataclass(frozen=True)
class Part:
    """One segment's audio file and the silence that follows its speech."""

    path: Path
    pause_after_ms: int = 0


@dataclass(frozen=True)
class StitchSpec:
    """Where and how one script's stitched audio is written."""

    sample_rate: int
    directory: Path
    stem: str  # file name without extension; each format adds its own (see OUTPUT_EXTENSIONS)
    output: OutputSpec
    lead_pause_ms: int = 0
    silence_threshold_dbfs: float = SILENCE_THRESHOLD_DBFS
    keep_ms: int = KEEP_MS
    fade_ms: int = FADE_MS
    # Formats written besides the output's for a later stage (a book's chapter WAV): neither
    # measured nor judged, as no listener gets them.
    copies: tuple[str, ...] = ()


@dataclass(frozen=True)
class Placement:
    """Where one part's kept samples landed: source [source_start, source_start + length) is
    programme [programme_start, programme_start + length), in samples at the stitch rate."""

    part: int  # the part's index in the parts given to render()
    source_start: int
    programme_start: int
    length: int
    rate: int

    def programme_seconds(self, source_seconds: float) -> float:
        """A time in the part's own audio as a time in the programme, held inside what was kept
        (a time in trimmed silence lands on the kept edge nearest to it)."""
        offset = round(source_seconds * self.rate) - self.source_start
        return (self.programme_start + min(max(offset, 0), self.length)) / self.rate


@dataclass(frozen=True)
class StitchedFile:
    """One encoded output file."""

    format: str
    path: Path
    duration_seconds: float  # of the programme; codecs' priming samples are not counted
    sha256: str
    size_bytes: int
    loudness: Loudness | None = None  # the file's own figures; None when normalization is off


@dataclass(frozen=True)
class StitchResult:
    """Every output file of a script, with the loudness decision that shaped them."""

    files: Mapping[str, StitchedFile]
    duration_seconds: float
    measured: Loudness | None = None  # before gain; None when normalization is off
    gain_db: float = 0.0
    samples: int = 0  # sample frames at the source rate
    placements: tuple[Placement, ...] = ()  # one per part with speech, in order
    loudness: LoudnessRecord | None = None  # the farthest output's figures; None when off
    warnings: tuple[str, ...] = ()  # one per output that misses the target by more than 1 LU


@dataclass(frozen=True)
class _Speech:
    """A decoded segment and the span of its speech, [start, end)."""

    samples: Samples
    start: int
    end: int

    @property
    def head_room(self) -> int:
        return self.start

    @property
    def tail_room(self) -> int:
        return len(self.samples) - self.end

    def clip(self, head: int, tail: int) -> Samples:
        return self.samples[self.start - head : self.end + tail]


def speech_bounds(samples: Samples, threshold: float) -> tuple[int, int] | None:
    """[first, last + 1) of the samples whose magnitude reaches `threshold`; None if none do."""
    loud = np.flatnonzero(np.abs(samples) >= threshold)
    if loud.size == 0:
        return None
    return int(loud[0]), int(loud[-1]) + 1


def split_keeps(pause: int, tail_room: int, head_room: int, keep: int) -> tuple[int, int]:
    """Samples kept after one segment's speech and before the next's, together within `pause`.

    Each side keeps up to `keep` of what it has; when the pause is shorter than both keeps,
    it is shared, with either side giving the other what it cannot use.
    """
    head_want = min(keep, head_room)
    tail = min(keep, tail_room, max(pause // 2, pause - head_want))
    head = min(head_want, pause - tail)
    return tail, head


def faded(samples: Samples, fade: int) -> Samples:
    """A copy of `samples` with linear fades in and out of `fade` samples (less if short)."""
    out = samples.copy()
    n = min(fade, len(out) // 2)
    if n > 0:
        ramp = np.arange(n, dtype=np.float32) / np.float32(n)
        out[:n] *= ramp
        out[-n:] *= ramp[::-1]
    return out


def render(
    parts: Iterable[Part],
    spec: StitchSpec,
    on_place: Callable[[Placement], None] | None = None,
) -> Iterator[Samples]:
    """The stitched programme as float32 chunks, one segment (or a second of silence) each.

    `on_place` hears each part's `Placement` as its audio is yielded.
    """
    rate = spec.sample_rate
    threshold = 10.0 ** (spec.silence_threshold_dbfs / 20.0)
    keep = _to_samples(spec.keep_ms, rate)
    fade = _to_samples(spec.fade_ms, rate)
    gap = _to_samples(spec.lead_pause_ms, rate)  # silence owed before the next speech
    prev: _Speech | None = None
    prev_head = 0
    prev_index = 0
    at = 0  # samples yielded so far: where the next chunk starts in the programme

    def placed(clip: Samples) -> Samples:
        assert prev is not None
        if on_place is not None:
            on_place(Placement(prev_index, prev.start - prev_head, at, len(clip), rate))
        return faded(clip, fade)

    for index, part in enumerate(parts):
        samples = decode(part.path, rate)
        bounds = speech_bounds(samples, threshold)
        if bounds is not None:
            cur = _Speech(samples, *bounds)
            if prev is None:
                tail, head = 0, min(keep, cur.head_room, gap)
            else:
                tail, head = split_keeps(gap, prev.tail_room, cur.head_room, keep)
                chunk = placed(prev.clip(prev_head, tail))
                yield chunk
                at += len(chunk)
            for silence in _silence(gap - tail - head, rate):
                yield silence
                at += len(silence)
            prev, prev_head, prev_index, gap = cur, head, index, 0
        gap += _to_samples(part.pause_after_ms, rate)
    if prev is not None:
        tail = min(keep, prev.tail_room, gap)
        yield placed(prev.clip(prev_head, tail))
        gap -= tail
    yield from _silence(gap, rate)


def find_leveling(
    parts: Sequence[Part], spec: StitchSpec, measured: Loudness, target_lufs: float
) -> Leveling:
    """The gain (and limit) that brings the programme to `target_lufs` under the ceiling: a
    plain gain when it fits, else a limited one found by measuring (one pass a step)."""
    leveling = first_leveling(measured, target_lufs, spec.output.true_peak_db)
    if leveling.limit_dbtp is None:
        return leveling
    tried: list[tuple[float, float]] = []
    for step in range(MAX_SEARCH_STEPS):
        # The first step goes through the full chain and measures the peak it leaves; the
        # rest measure loudness only, through the limiter at the programme's rate (the peaks
        # between samples it misses weigh nothing in integrated loudness).
        first = step == 0
        got = measure_loudness(
            render(parts, spec),
            spec.sample_rate,
            filters=leveling_filter(leveling, spec.sample_rate, oversample=first),
            peak=first,
        )
        if first:
            leveling = held_limit(leveling, got.true_peak_dbtp)
        if got.integrated_lufs is None or met(got.integrated_lufs, target_lufs):
            return leveling
        tried.append((leveling.gain_db, got.integrated_lufs))
        gain = min(next_gain(tried, target_lufs), leveling.max_gain_db)
        if gain == leveling.gain_db:
            return leveling  # as much limiting as is allowed: the target is missed, and said
        leveling = Leveling(gain, leveling.limit_dbtp, leveling.max_gain_db)
    return leveling


def output_paths(spec: StitchSpec) -> dict[str, Path]:
    """The file each requested format is written to."""
    formats = dict.fromkeys((*spec.output.formats, *spec.copies))
    if not formats:
        raise AudioError("no output formats requested")
    unknown = [f for f in formats if f not in OUTPUT_EXTENSIONS]
    if unknown:
        raise AudioError(
            f"unknown output format {unknown[0]!r}; expected one of {', '.join(OUTPUT_EXTENSIONS)}"
        )
    return {fmt: spec.directory / f"{spec.stem}{OUTPUT_EXTENSIONS[fmt]}" for fmt in formats}


def stitch(parts: Sequence[Part], spec: StitchSpec) -> StitchResult:
    """Stitch `parts` into every format of `spec.output`; files appear atomically.

    With loudness normalization `parts` is read more than once (measure, then encode; a
    limited gain adds a measuring pass a step, at most `MAX_SEARCH_STEPS`), one segment file
    at a time.
    """
    outputs = output_paths(spec)
    rate = spec.sample_rate
    target = spec.output.loudness_lufs
    measured: Loudness | None = None
    leveling = Leveling(0.0)
    if target is not None:
        measured = measure_loudness(render(parts, spec), rate)
        leveling = find_leveling(parts, spec, measured, target)
    limited = leveling.limit_dbtp is not None
    # A limited programme is leveled by ffmpeg, gain first; a plain gain is applied here.
    gain = 1.0 if limited else 10.0 ** (leveling.gain_db / 20.0)
    written = 0
    placements: list[Placement] = []

    def pcm() -> Iterator[bytes]:
        nonlocal written
        for chunk in render(parts, spec, placements.append):
            written += len(chunk)
            yield to_pcm16(chunk, gain)

    if not spec.directory.is_dir():
        spec.directory.mkdir(parents=True, exist_ok=True)
    encoded = encode(
        pcm(),
        sample_rate=rate,
        outputs=outputs,
        mp3_bitrate=spec.output.mp3_bitrate,
        filters=leveling_filter(leveling, rate) if limited else None,
        measure=() if target is None else spec.output.formats,
    )
    record = None
    warnings: tuple[str, ...] = ()
    if target is not None:
        worst = farthest(encoded, target)
        record = LoudnessRecord(
            target_lufs=target,
            ceiling_dbtp=spec.output.true_peak_db,
            gain_db=round(leveling.gain_db, 2),
            limited=limited,
            integrated_lufs=encoded[worst].integrated_lufs,
            range_lu=encoded[worst].range_lu,
            true_peak_dbtp=encoded[worst].true_peak_dbtp,
            format=worst,
        )
        missed = (miss_warning(figures, target, fmt) for fmt, figures in encoded.items())
        warnings = tuple(warning for warning in missed if warning is not None)
    duration = written / rate
    files = {
        fmt: StitchedFile(
            fmt, path, duration, sha256_file(path), path.stat().st_size, encoded.get(fmt)
        )
        for fmt, path in outputs.items()
    }
    return StitchResult(
        files, duration, measured, leveling.gain_db, written, tuple(placements), record, warnings
    )


def parts_for(script: ScriptPlan, path_of: Callable[[PlannedSegment], Path]) -> list[Part]:
    """The parts of a planned script, each segment's file found by `path_of` (e.g. the cache)."""
    return [Part(path_of(segment), segment.pause_after_ms) for segment in script.segments]


def spec_for(script: ScriptPlan, directory: Path, stem: str | None = None) -> StitchSpec:
    """The stitch settings of a planned script, written to `directory`/`stem`.*; a book
    chapter without a wav output writes one too, for the book alone (`OutputSpec.lossless_copy`)."""
    copy = script.output.lossless_copy and "wav" not in script.output.formats
    return StitchSpec(
        sample_rate=script.params.effective_sampling_rate,
        directory=directory,
        stem=stem if stem is not None else script.script_id,
        output=script.output,
        lead_pause_ms=script.lead_pause_ms,
        copies=("wav",) if copy else (),
    )


def _to_samples(ms: int, rate: int) -> int:
    return max(0, round(ms * rate / 1000))


def _silence(n: int, rate: int) -> Iterator[Samples]:
    step = rate * _SILENCE_CHUNK_SECONDS
    zeros = np.zeros(min(n, step), dtype=np.float32)
    for start in range(0, n, step):
        yield zeros[: min(step, n - start)]
