"""Stitching throughput and memory: N hours of segments to mp3 and 8 kHz mu-law WAV.

Prints wall time, times real time and peak RSS of Python and of its ffmpeg children for the
streaming stitcher; then ffmpeg alone doing the same work on the same audio (the programme
stitched to a WAV file beforehand, untimed): its own loudness measurement, the same limited
measuring passes when the gain needs the limiter, and one encode of both formats that measures
each file it encodes (decoding it again in the same run), as the stitcher's ffmpeg runs do,
with the same arguments (`pipeline.audio.encoding_args`), and the stitcher's time as a ratio of it
(the goal: at most 1.1x); and the same for naive pydub concatenation (`sum()` of AudioSegments,
exported by pydub) on a shorter programme. Each variant runs in its own process so the peak
RSS figures are its own. A few distinct ~20 s segment files are made and reused, so the disk
holds seconds of input, not hours.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import warnings
import wave
from pathlib import Path

import numpy as np

from pipeline.audio import (
    encoding_args,
    ffmpeg_exe,
    leveling_filter,
    meter_name,
    parse_ebur128_summaries,
    parse_ebur128_summary,
)
from pipeline.loudness import (
    MAX_SEARCH_STEPS,
    Leveling,
    farthest,
    first_leveling,
    held_limit,
    met,
    next_gain,
)
from pipeline.plan import OutputSpec
from pipeline.stitch import Part, StitchSpec, stitch

DISTINCT_SEGMENTS = 6
PAUSES_MS = (0, 150, 300, 300, 600, 1200)
FORMATS = ("mp3", "wav-mulaw")
LOUDNESS_LUFS = -16.0


def speechlike(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Syllable-like bursts of shaped noise and tone with short gaps, padded with silence."""
    rng = np.random.default_rng(seed)
    pieces = [np.zeros(int(rng.uniform(0.05, 0.3) * rate))]
    while sum(map(len, pieces)) < seconds * rate:
        n = int(rng.uniform(0.12, 0.35) * rate)
        t = np.arange(n) / rate
        envelope = np.sin(np.pi * np.arange(n) / n) ** 2
        voiced = np.sin(2 * np.pi * rng.uniform(90, 220) * t) * 0.6
        pieces.append((voiced + rng.normal(0, 0.15, n)) * envelope * rng.uniform(0.05, 0.4))
        pieces.append(np.zeros(int(rng.uniform(0.02, 0.2) * rate)))
    pieces.append(np.zeros(int(rng.uniform(0.05, 0.3) * rate)))
    return np.concatenate(pieces)


def make_segments(folder: Path, seconds: float, rate: int) -> list[Path]:
    """A few distinct segment WAVs, as the cache would hold them."""
    paths = []
    for i in range(DISTINCT_SEGMENTS):
        pcm = np.clip(np.rint(speechlike(seconds, rate, i) * 32767), -32768, 32767)
        path = folder / f"segment-{i}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm.astype("<i2").tobytes())
        paths.append(path)
    return paths


def make_parts(segments: list[Path], hours: float, segment_seconds: float) -> list[Part]:
    """Enough parts, reusing the segment files, to make about `hours` of programme."""
    rng = random.Random(1)
    parts: list[Part] = []
    total = 0.0
    while total < hours * 3600:
        pause = rng.choice(PAUSES_MS)
        parts.append(Part(segments[len(parts) % len(segments)], pause))
        total += segment_seconds + pause / 1000
    return parts


def run_streaming(parts: list[Part], rate: int, out: Path) -> dict[str, object]:
    spec = StitchSpec(rate, out, "book", OutputSpec(FORMATS, loudness_lufs=LOUDNESS_LUFS))
    result = stitch(parts, spec)
    assert result.loudness is not None
    return {
        "audio_seconds": result.duration_seconds,
        "gain_db": round(result.gain_db, 2),
        "limited": result.loudness.limited,
        "lufs": result.loudness.integrated_lufs,
        "peak": result.loudness.true_peak_dbtp,
        "farthest": result.loudness.format,
        "sizes": {f: r.size_bytes for f, r in result.files.items()},
    }


def _ffmpeg_log(*args: str) -> str:
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-v", "info", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stderr


def run_ffmpeg_alone(parts: list[Part], rate: int, out: Path) -> dict[str, object]:
    """The same measurements and encode as the stitcher's, by ffmpeg from a stitched file."""
    programme = out.parent / "programme.wav"
    if not programme.exists():  # untimed: made by the first call
        stitch(parts, StitchSpec(rate, out.parent, "programme", OutputSpec(("wav",))))
        return {}
    source = ["-i", str(programme)]
    measured = parse_ebur128_summary(
        _ffmpeg_log(*source, "-af", "ebur128=peak=true:framelog=quiet", "-f", "null", "-")
    )
    leveling = first_leveling(measured, LOUDNESS_LUFS, -1.0)
    tried: list[tuple[float, float]] = []
    steps = 0
    while leveling.limit_dbtp is not None and steps < MAX_SEARCH_STEPS:
        first = steps == 0
        steps += 1
        meter = "ebur128=peak=true:framelog=quiet" if first else "ebur128=framelog=quiet"
        chain = f"{leveling_filter(leveling, rate, oversample=first)},{meter}"
        got = parse_ebur128_summary(_ffmpeg_log(*source, "-af", chain, "-f", "null", "-"))
        if first:
            leveling = held_limit(leveling, got.true_peak_dbtp)
        if got.integrated_lufs is None or met(got.integrated_lufs, LOUDNESS_LUFS):
            break
        tried.append((leveling.gain_db, got.integrated_lufs))
        gain = min(next_gain(tried, LOUDNESS_LUFS), leveling.max_gain_db)
        leveling = Leveling(gain, leveling.limit_dbtp, leveling.max_gain_db)
    out.mkdir(parents=True, exist_ok=True)
    args = encoding_args(
        {fmt: out / f"book.{fmt}" for fmt in FORMATS},
        sample_rate=rate,
        mp3_bitrate="128k",
        filters=leveling_filter(leveling, rate),
        measure=FORMATS,
        fed=False,  # no WAV among the formats: each is measured from its own encoder
    )
    figures = parse_ebur128_summaries(_ffmpeg_log(*source, *args))
    encoded = {fmt: figures[meter_name(index)] for index, fmt in enumerate(FORMATS)}
    worst = farthest(encoded, LOUDNESS_LUFS)
    return {
        "audio_seconds": 0.0,
        "gain_db": round(leveling.gain_db, 2),
        "passes": 2 + steps,
        "lufs": encoded[worst].integrated_lufs,
        "peak": encoded[worst].true_peak_dbtp,
        "farthest": worst,
    }


def run_naive(parts: list[Part], rate: int, out: Path) -> dict[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydub warns that no ffmpeg is on PATH
        from pydub import AudioSegment
        from pydub.silence import detect_leading_silence

    AudioSegment.converter = ffmpeg_exe()
    pieces = []
    for part in parts:
        segment = AudioSegment.from_wav(part.path)
        start = detect_leading_silence(segment, -50.0)
        end = len(segment) - detect_leading_silence(segment.reverse(), -50.0)
        pieces.append(segment[start:end].fade_in(5).fade_out(5))
        pieces.append(AudioSegment.silent(part.pause_after_ms, frame_rate=rate))
    whole = sum(pieces[1:], pieces[0])
    whole = whole.apply_gain(-20.0 - whole.dBFS)  # RMS, not LUFS: what a naive script does
    out.mkdir(parents=True, exist_ok=True)
    whole.export(out / "book.mp3", format="mp3", bitrate="128k")
    whole.export(
        out / "book.mulaw.wav", format="wav", codec="pcm_mulaw", parameters=["-ar", "8000"]
    )
    return {
        "audio_seconds": len(whole) / 1000,
        "sizes": {p.name: p.stat().st_size for p in out.iterdir()},
    }


def worker(variant: str, folder: Path, hours: float, segment_seconds: float, rate: int) -> None:
    """Run one variant in this process and print its figures as one JSON line."""
    segments = sorted(folder.glob("segment-*.wav"))
    parts = make_parts(segments, hours, segment_seconds)
    out = folder / f"out-{variant}"
    run = {"streaming": run_streaming, "ffmpeg": run_ffmpeg_alone, "naive": run_naive}[variant]
    if variant == "ffmpeg":
        run(parts, rate, out)  # the stitched programme it reads, untimed
    started = time.perf_counter()
    figures = run(parts, rate, out)
    wall = time.perf_counter() - started
    for path in out.iterdir():
        path.unlink()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                **figures,
                "segments": len(parts),
                "wall": wall,
                "rss_mib": own,
                "ffmpeg_mib": children,
            }
        )
    )


def measure(
    variant: str, folder: Path, hours: float, args: argparse.Namespace
) -> dict[str, object] | None:
    cmd = [sys.executable, __file__, "--worker", variant, "--dir", str(folder)]
    cmd += ["--hours", str(hours), "--segment-seconds", str(args.segment_seconds)]
    cmd += ["--rate", str(args.rate)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"{variant:9} {hours:g} h: failed ({proc.stderr.strip().splitlines()[-1:]})")
        return None
    f: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    if variant == "ffmpeg":
        print(
            f"ffmpeg    alone, the same {f['passes']} passes from a stitched WAV: "
            f"{f['wall']:7.1f} s wall, gain {f['gain_db']} dB, {f['lufs']} LUFS, "
            f"{f['peak']} dBTP ({f['farthest']})"
        )
        return f
    audio = f["audio_seconds"]
    print(
        f"{variant:9} {audio / 3600:6.2f} h audio, {f['segments']:5d} segments: "
        f"{f['wall']:7.1f} s wall, {audio / f['wall']:6.0f}x real time, peak RSS "
        f"python {f['rss_mib']:5.0f} MiB, children {f['ffmpeg_mib']:5.0f} MiB"
        + (f", gain {f['gain_db']} dB" if "gain_db" in f else "")
        + (
            f" ({'limited' if f['limited'] else 'plain'}), {f['lufs']} LUFS, {f['peak']} dBTP"
            f" ({f['farthest']})"
            if "lufs" in f
            else ""
        )
    )
    return f


def main() -> None:
    """Build the segments, run each variant in its own process, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--naive-hours", type=float, default=1.0, help="0 skips pydub")
    parser.add_argument("--segment-seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=24000)
    parser.add_argument(
        "--worker", choices=["streaming", "ffmpeg", "naive"], help=argparse.SUPPRESS
    )
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.dir, args.hours, args.segment_seconds, args.rate)
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        segments = make_segments(folder, args.segment_seconds, args.rate)
        disk = sum(p.stat().st_size for p in segments) / 2**20
        print(
            f"{len(segments)} distinct segments of ~{args.segment_seconds:g} s at {args.rate} Hz "
            f"({disk:.1f} MiB on disk), reused; outputs: {', '.join(FORMATS)}; "
            f"loudness {LOUDNESS_LUFS:g} LUFS at -1 dBTP (limited where the gain needs it)"
        )
        ours = measure("streaming", folder, args.hours, args)
        alone = measure("ffmpeg", folder, args.hours, args)
        if ours is not None and alone is not None:
            ratio = float(ours["wall"]) / float(alone["wall"])  # type: ignore[arg-type]
            print(f"stitch-and-encode / ffmpeg alone: {ratio:.2f}x (goal: at most 1.1x)")
        if args.naive_hours > 0:
            measure("naive", folder, args.naive_hours, args)
        print(
            "children = the largest ffmpeg; Linux counts a child's peak from the parent's RSS "
            "at spawn, so it is never below the parent's size when ffmpeg started"
        )


if __name__ == "__main__":
    main()
