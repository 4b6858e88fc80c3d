"""Stitching real audio files with the real ffmpeg: pauses, formats, loudness, failures.

Segments are tone and noise bursts with silence around them, written as WAV files, so the
tests measure what a listener would hear without depending on a TTS engine. Pauses are
measured in the decoded output files, never taken from the code under test.
"""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import wave
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from pipeline.audio import (
    FED_METER,
    AudioError,
    DecodeError,
    Loudness,
    decode,
    encoding_args,
    ffmpeg_exe,
    parse_ebur128_summary,
)
from pipeline.loudness import Leveling, first_leveling
from pipeline.plan import OutputSpec, PlannedSegment, ScriptPlan
from pipeline.rime.params import VoiceParams
from pipeline.stitch import (
    Part,
    StitchSpec,
    faded,
    parts_for,
    render,
    spec_for,
    speech_bounds,
    split_keeps,
    stitch,
)

RATE = 24000
Floats = npt.NDArray[np.float64]


# --- fixtures: audio made here, measured here ---------------------------------------------


def tone(ms: float, *, rate: int = RATE, freq: float = 440.0, dbfs: float = -12.0) -> Floats:
    """A sine burst with 2 ms ramps, peaking at `dbfs`."""
    n = round(ms * rate / 1000)
    t = np.arange(n) / rate
    x = 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t + np.pi / 2)
    ramp = min(n // 2, round(0.002 * rate))
    if ramp:
        x[:ramp] *= np.linspace(0, 1, ramp)
        x[-ramp:] *= np.linspace(1, 0, ramp)
    return x


def noise(ms: float, *, rate: int = RATE, dbfs: float = -20.0, seed: int = 1) -> Floats:
    """Gaussian noise with RMS at `dbfs`."""
    n = round(ms * rate / 1000)
    return np.random.default_rng(seed).normal(0.0, 10 ** (dbfs / 20), n)


def silence(ms: float, rate: int = RATE) -> Floats:
    return np.zeros(round(ms * rate / 1000))


def padded(speech: Floats, head_ms: float, tail_ms: float, rate: int = RATE) -> Floats:
    return np.concatenate([silence(head_ms, rate), speech, silence(tail_ms, rate)])


def write_wav(path: Path, samples: Floats, rate: int = RATE, channels: int = 1) -> Path:
    """A 16-bit PCM WAV of `samples` (duplicated over `channels`)."""
    pcm = np.clip(np.rint(samples * 32768), -32768, 32767).astype("<i2")
    if channels > 1:
        pcm = np.repeat(pcm, channels)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def ffmpeg(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", *args], capture_output=True, check=False
    )


def decode_file(path: Path, rate: int, *input_args: str) -> npt.NDArray[np.int16]:
    """A produced file decoded by ffmpeg to mono 16-bit PCM at `rate`."""
    proc = ffmpeg(*input_args, "-i", str(path), "-ac", "1", "-ar", str(rate), "-f", "s16le", "-")
    assert proc.returncode == 0, proc.stderr.decode()
    return np.frombuffer(proc.stdout, dtype="<i2")


def stream_info(path: Path, *input_args: str) -> tuple[str, int, str]:
    """(codec, sample rate, channel layout) of the first audio stream, as ffmpeg reports it."""
    log = ffmpeg(*input_args, "-i", str(path)).stderr.decode()
    found = re.search(r"Audio: (\w+).*?, (\d+) Hz, (\w+)", log)
    assert found, log
    return found[1], int(found[2]), found[3]


def loudness_of(path: Path) -> Loudness:
    """EBU R128 integrated loudness and true peak of a file, measured by ffmpeg."""
    proc = ffmpeg("-nostats", "-i", str(path), "-af", "ebur128=peak=true", "-f", "null", "-")
    return parse_ebur128_summary(proc.stderr.decode())


def silent_runs(
    pcm: npt.NDArray[np.int16], rate: int, *, dbfs: float = -40.0, min_ms: float = 3.0
) -> list[tuple[float, float]]:
    """(start_ms, length_ms) of every run below `dbfs` lasting at least `min_ms`."""
    quiet = np.abs(pcm.astype(np.int32)) < 32768 * 10 ** (dbfs / 20)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    runs = []
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        if (end - start) * 1000 / rate >= min_ms:
            runs.append((start * 1000 / rate, (end - start) * 1000 / rate))
    return runs


def spec(
    tmp_path: Path, *formats: str, lead_pause_ms: int = 0, loudness_lufs: float | None = None
) -> StitchSpec:
    output = OutputSpec(formats=formats or ("wav",), loudness_lufs=loudness_lufs)
    return StitchSpec(RATE, tmp_path / "out", "script", output, lead_pause_ms=lead_pause_ms)


# --- pure parts -----------------------------------------------------------------------------


def test_speech_bounds_finds_first_and_last_loud_sample() -> None:
    x = np.zeros(100, dtype=np.float32)
    x[10] = 0.5
    x[42] = -0.5
    x[60] = 0.001  # below -50 dBFS
    assert speech_bounds(x, 10 ** (-50 / 20)) == (10, 43)
    assert speech_bounds(np.full(50, 0.001, dtype=np.float32), 10 ** (-50 / 20)) is None


@pytest.mark.parametrize(
    ("pause", "tail_room", "head_room", "expected"),
    [
        (100, 50, 50, (10, 10)),  # plenty of everything: full keeps
        (100, 3, 50, (3, 10)),  # little room after the speech
        (10, 50, 50, (5, 5)),  # pause shorter than two keeps: shared
        (10, 2, 50, (2, 8)),  # ... the head takes what the tail cannot use
        (0, 50, 50, (0, 0)),  # speech to speech
        (15, 50, 0, (10, 0)),
    ],
)
def test_split_keeps(pause: int, tail_room: int, head_room: int, expected: tuple[int, int]) -> None:
    assert split_keeps(pause, tail_room, head_room, keep=10) == expected


def test_fades_start_and_end_at_zero_and_leave_the_middle() -> None:
    x = np.ones(1000, dtype=np.float32)
    y = faded(x, 100)
    assert y[0] == 0.0 and y[-1] == 0.0
    assert y[50] == pytest.approx(0.5)
    assert np.all(y[100:900] == 1.0)
    assert np.all(np.diff(y[:100]) > 0)
    assert x[0] == 1.0  # the input is left alone


def test_a_plain_gain_when_it_fits_under_the_ceiling_else_a_limited_one() -> None:
    assert first_leveling(Loudness(-30.0, -20.0), -16.0, -1.0) == Leveling(14.0)
    # +14 dB would put the peak at +1 dBTP: the gain stays, and a limiter holds -1.1 dBTP.
    limited = first_leveling(Loudness(-30.0, -13.0), -16.0, -1.0)
    assert limited.gain_db == pytest.approx(14.0)
    assert limited.limit_dbtp == pytest.approx(-1.1)
    assert first_leveling(Loudness(-10.0, -2.0), -16.0, -1.0) == Leveling(-6.0)
    assert first_leveling(Loudness(None, None), -16.0, -1.0) == Leveling(0.0)


def test_parse_ebur128_summary_reads_silence_as_none() -> None:
    log = "Summary:\n\n  Integrated loudness:\n    I:         -70.0 LUFS\n  True peak:\n"
    log += "    Peak:       -inf dBFS\n"
    assert parse_ebur128_summary(log) == Loudness(None, None)


# --- real files -------------------------------------------------------------------------------


def test_pauses_measured_in_wav_and_mulaw_wav(tmp_path: Path) -> None:
    segments = [
        (padded(tone(400), 80, 120), 250),
        (tone(300, freq=600), 40),  # no silence around it at all
        (padded(noise(500), 5, 300), 700),
        (silence(400), 300),  # all silence: only its pause remains, added to the previous one
        (padded(tone(250, freq=300), 200, 3), 1000),
        (padded(noise(350, seed=2), 30, 30), 500),
    ]
    parts = [
        Part(write_wav(tmp_path / f"seg{i}.wav", x), pause) for i, (x, pause) in enumerate(segments)
    ]
    result = stitch(parts, spec(tmp_path, "wav", "wav-mulaw", lead_pause_ms=120))

    expected_gaps = [250, 40, 700 + 300, 1000]
    for fmt, rate in [("wav", RATE), ("wav-mulaw", 8000)]:
        pcm = decode_file(result.files[fmt].path, rate)
        runs = silent_runs(pcm, rate)
        lead, *gaps, trail = runs
        assert lead[0] == 0 and lead[1] == pytest.approx(120, abs=10), fmt
        assert [g for _, g in gaps] == pytest.approx(expected_gaps, abs=10), fmt
        assert trail[0] + trail[1] == pytest.approx(len(pcm) * 1000 / rate, abs=1), fmt
        assert trail[1] == pytest.approx(500, abs=10), fmt
    speech_ms = 400 + 300 + 500 + 250 + 350
    assert result.duration_seconds * 1000 == pytest.approx(
        120 + speech_ms + sum(p for _, p in segments), abs=5
    )


def test_every_format_decodes_at_its_rate_and_length(tmp_path: Path) -> None:
    parts = [
        Part(write_wav(tmp_path / "a.wav", padded(tone(700), 50, 50)), 300),
        Part(write_wav(tmp_path / "b.wav", padded(noise(900), 50, 50)), 200),
    ]
    result = stitch(parts, spec(tmp_path, "wav", "wav-mulaw", "mulaw", "mp3", "ogg"))
    seconds = (700 + 300 + 900 + 200) / 1000
    assert result.duration_seconds == pytest.approx(seconds, abs=0.002)

    out = result.files
    assert stream_info(out["wav"].path) == ("pcm_s16le", RATE, "mono")
    assert stream_info(out["wav-mulaw"].path) == ("pcm_mulaw", 8000, "mono")
    assert stream_info(out["mulaw"].path, "-f", "mulaw", "-ar", "8000") == (
        "pcm_mulaw",
        8000,
        "mono",
    )
    assert stream_info(out["mp3"].path) == ("mp3", RATE, "mono")
    assert stream_info(out["ogg"].path) == ("opus", 48000, "mono")
    assert out["mulaw"].size_bytes == pytest.approx(seconds * 8000, abs=2)  # one byte a sample
    # IVR systems read the first chunk as fmt: mu-law (tag 7), mono, 8 kHz, 8 bits.
    header = out["wav-mulaw"].path.read_bytes()[:36]
    assert header[12:16] == b"fmt " and struct.unpack_from("<HHIIHH", header, 20) == (
        7,
        1,
        8000,
        8000,
        1,
        8,
    )
    assert out["mp3"].path.read_bytes()[:3] == b"ID3" or out["mp3"].path.read_bytes()[0] == 0xFF

    lengths = {
        "wav": len(decode_file(out["wav"].path, RATE)),
        "wav-mulaw": len(decode_file(out["wav-mulaw"].path, RATE)),
        "mulaw": len(decode_file(out["mulaw"].path, RATE, "-f", "mulaw", "-ar", "8000")),
        "mp3": len(decode_file(out["mp3"].path, RATE)),
        "ogg": len(decode_file(out["ogg"].path, RATE)),
    }
    assert lengths["wav"] == result.samples
    for fmt, n in lengths.items():
        # Compressed codecs pad to whole frames (mp3 1152 samples, opus 20 ms).
        assert n / RATE == pytest.approx(seconds, abs=0.06), fmt
    for fmt, f in out.items():
        assert (
            f.path.name
            == {
                "wav": "script.wav",
                "wav-mulaw": "script.mulaw.wav",
                "mulaw": "script.ulaw",
                "mp3": "script.mp3",
                "ogg": "script.ogg",
            }[fmt]
        )
        data = f.path.read_bytes()
        assert f.sha256 == hashlib.sha256(data).hexdigest()
        assert f.size_bytes == len(data)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f.path.name for f in out.values()
    )  # no temporary files left


def test_loudness_lands_on_target_under_the_ceiling(tmp_path: Path) -> None:
    # Quiet segments at different levels: one gain for the whole programme, not one each.
    parts = [
        Part(write_wav(tmp_path / "a.wav", padded(noise(3000, dbfs=-38), 100, 100)), 400),
        Part(write_wav(tmp_path / "b.wav", padded(tone(3000, dbfs=-30), 100, 100)), 400),
        Part(write_wav(tmp_path / "c.wav", padded(noise(3000, dbfs=-44, seed=3), 0, 0)), 0),
    ]
    result = stitch(parts, spec(tmp_path, "wav", "mp3", loudness_lufs=-16.0))
    assert result.measured is not None and result.measured.integrated_lufs is not None
    assert result.measured.integrated_lufs < -30
    assert result.gain_db > 10

    for fmt in ("wav", "mp3"):
        measured = loudness_of(result.files[fmt].path)
        assert measured.integrated_lufs == pytest.approx(-16.0, abs=1.0), fmt
        assert measured.true_peak_dbtp is not None
    wav_peak = loudness_of(result.files["wav"].path).true_peak_dbtp
    assert wav_peak is not None and wav_peak <= -1.0

    # The relative levels of the segments survive: a single linear gain, not per-segment.
    pcm = decode_file(result.files["wav"].path, RATE).astype(np.float64)
    seg = round(3.0 * RATE)
    a_start = round(0.010 * RATE)
    b_start = a_start + seg + round(0.4 * RATE)
    rms_a = np.sqrt(np.mean(pcm[a_start : a_start + seg] ** 2))
    rms_b = np.sqrt(np.mean(pcm[b_start : b_start + seg] ** 2))
    assert 20 * np.log10(rms_b / rms_a) == pytest.approx(-33 + 38, abs=0.5)


def test_a_click_in_near_silence_is_limited_at_most_10_db_and_misses_the_target(
    tmp_path: Path,
) -> None:
    spiky = padded(noise(4000, dbfs=-40), 50, 50)
    spiky[RATE] = 0.5  # one loud click in quiet noise: low loudness, high peak
    parts = [Part(write_wav(tmp_path / "a.wav", spiky), 100)]
    result = stitch(parts, spec(tmp_path, "wav", "wav-mulaw", loudness_lufs=-10.0))

    measured = loudness_of(result.files["wav"].path)
    assert measured.true_peak_dbtp is not None and measured.true_peak_dbtp <= -1.0
    assert measured.true_peak_dbtp >= -1.6  # the limiter held the click at the ceiling
    assert measured.integrated_lufs is not None and measured.integrated_lufs < -10.0 - 5
    assert result.loudness is not None and result.loudness.limited
    wav = result.files["wav"].loudness
    assert wav is not None and wav.integrated_lufs is not None
    assert wav.integrated_lufs == pytest.approx(measured.integrated_lufs, abs=0.15)
    # Both outputs miss, each said so by name; the record holds the farther one's figures.
    assert [w.split(":")[0] for w in result.warnings] == ["wav", "wav-mulaw"]
    assert all("misses the target -10 LUFS" in w for w in result.warnings)
    mulaw = loudness_of(result.files["wav-mulaw"].path)
    assert result.files["wav-mulaw"].loudness == mulaw
    assert mulaw.true_peak_dbtp is not None and mulaw.true_peak_dbtp <= -0.5  # mu-law adds a little
    assert result.loudness.format == "wav-mulaw"  # the noise's highs are gone at 8 kHz
    assert result.loudness.integrated_lufs == mulaw.integrated_lufs


def test_a_books_wav_copy_is_written_but_neither_measured_nor_judged(tmp_path: Path) -> None:
    # The click that misses any target: only the listed output may be named for it.
    spiky = padded(noise(2000, dbfs=-40), 50, 50)
    spiky[RATE // 2] = 0.5
    parts = [Part(write_wav(tmp_path / "a.wav", spiky), 100)]
    copying = replace(spec(tmp_path, "mp3", loudness_lufs=-10.0), copies=("wav",))
    result = stitch(parts, copying)
    assert sorted(result.files) == ["mp3", "wav"]
    assert result.files["wav"].loudness is None
    assert result.files["mp3"].loudness == loudness_of(result.files["mp3"].path)
    assert [w.split(":")[0] for w in result.warnings] == ["mp3"]
    assert result.loudness is not None and result.loudness.format == "mp3"
    # An empty programme: outputs that measure silent, not a failed encode.
    quiet = [Part(write_wav(tmp_path / "s.wav", silence(300)), 0)]
    empty = stitch(quiet, spec(tmp_path, "mp3", "wav-mulaw", loudness_lufs=-16.0))
    assert empty.samples == 0 and empty.warnings == ()
    assert {f.loudness for f in empty.files.values()} == {Loudness(None, None)}


def test_silent_script_is_its_pauses(tmp_path: Path) -> None:
    parts = [Part(write_wav(tmp_path / "s.wav", silence(800)), 250)]
    result = stitch(parts, spec(tmp_path, "wav", lead_pause_ms=100, loudness_lufs=-16.0))
    pcm = decode_file(result.files["wav"].path, RATE)
    assert len(pcm) == round(0.35 * RATE)
    assert not pcm.any()
    assert result.gain_db == 0.0
    assert result.measured == Loudness(None, None)


def test_a_script_of_nothing_gives_empty_valid_files(tmp_path: Path) -> None:
    parts = [Part(write_wav(tmp_path / "s.wav", silence(300)), 0)]
    result = stitch(parts, spec(tmp_path, "wav", "mp3", loudness_lufs=-16.0))
    assert result.duration_seconds == 0.0
    assert len(decode_file(result.files["wav"].path, RATE)) == 0
    assert stream_info(result.files["wav"].path) == ("pcm_s16le", RATE, "mono")


def test_stitching_is_deterministic(tmp_path: Path) -> None:
    parts = [
        Part(write_wav(tmp_path / "a.wav", padded(tone(500), 20, 40)), 150),
        Part(write_wav(tmp_path / "b.wav", padded(noise(600), 60, 10)), 0),
    ]
    one = stitch(parts, spec(tmp_path / "1", "wav", "mp3", "ogg", loudness_lufs=-18.0))
    two = stitch(parts, spec(tmp_path / "2", "wav", "mp3", "ogg", loudness_lufs=-18.0))
    for fmt in ("wav", "mp3", "ogg"):
        assert one.files[fmt].sha256 == two.files[fmt].sha256, fmt
        assert one.files[fmt].path != two.files[fmt].path


def test_segments_in_other_formats_are_decoded_by_ffmpeg(tmp_path: Path) -> None:
    # A stereo 16 kHz WAV and an MP3 in a 24 kHz script: resampled and downmixed on the way in.
    stereo = write_wav(tmp_path / "a.wav", padded(tone(600, rate=16000), 40, 40, 16000), 16000, 2)
    source = write_wav(tmp_path / "b-src.wav", padded(noise(600), 100, 100))
    mp3 = tmp_path / "b.mp3"
    assert ffmpeg("-i", str(source), "-c:a", "libmp3lame", "-b:a", "64k", str(mp3)).returncode == 0
    assert len(decode(stereo, RATE)) == pytest.approx(680 * RATE / 1000, abs=2)

    result = stitch([Part(stereo, 333), Part(mp3, 0)], spec(tmp_path, "wav"))
    runs = silent_runs(decode_file(result.files["wav"].path, RATE), RATE)
    assert [g for _, g in runs] == pytest.approx([333], abs=10)


def test_streamed_wav_header_with_unknown_size_is_read_whole(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "s.wav", tone(500))
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 4, 0xFFFFFFFF)
    struct.pack_into("<I", data, data.index(b"data") + 4, 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    assert len(decode(path, RATE)) == round(0.5 * RATE)


def test_a_bad_segment_fails_naming_it_and_leaves_no_files(tmp_path: Path) -> None:
    good = write_wav(tmp_path / "good.wav", tone(300))
    bad = tmp_path / "broken-segment.wav"
    bad.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(DecodeError, match=r"broken-segment\.wav"):
        stitch([Part(good, 100), Part(bad, 0)], spec(tmp_path, "wav", "mp3"))
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_segment_fails_as_decode_error(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match=r"absent\.wav"):
        stitch([Part(tmp_path / "absent.wav", 0)], spec(tmp_path, "wav"))


def test_unknown_format_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="'flac'"):
        stitch([Part(tmp_path / "absent.wav", 0)], spec(tmp_path, "wav", "flac"))
    assert not (tmp_path / "out").exists()


def test_render_reads_segments_one_at_a_time(tmp_path: Path) -> None:
    paths = [write_wav(tmp_path / f"{i}.wav", tone(200)) for i in range(5)]
    opened: list[int] = []

    def parts() -> Iterator[Part]:
        for i, path in enumerate(paths):
            opened.append(i)
            yield Part(path, 100)

    chunks = render(parts(), spec(tmp_path))
    first = next(chunks)  # the first segment is emitted once the second is known
    assert opened == [0, 1]
    total = len(first) + sum(len(c) for c in chunks)
    assert total * 1000 / RATE == pytest.approx(5 * (200 + 100), abs=1)


def test_plan_helpers_carry_pauses_rate_and_lead(tmp_path: Path) -> None:
    params = VoiceParams("cove", "mistv2", "eng", 22050, None, False, False, False)
    segs = tuple(
        PlannedSegment(i, f"s{i}", f"s{i}", pause, (), f"key{i}")
        for i, pause in enumerate([250, 0])
    )
    script = ScriptPlan("intro", params, OutputSpec(formats=("mp3",)), segs, lead_pause_ms=40)
    parts = parts_for(script, lambda s: tmp_path / f"{s.cache_key}.wav")
    assert parts == [Part(tmp_path / "key0.wav", 250), Part(tmp_path / "key1.wav", 0)]
    made = spec_for(script, tmp_path)
    assert (made.sample_rate, made.stem, made.lead_pause_ms) == (22050, "intro", 40)
    assert made.output.formats == ("mp3",)


def test_every_meter_of_an_encode_is_in_one_filter_graph() -> None:
    # ffmpeg runs each filter graph on a thread of its own, and meters on several threads print
    # their summaries into one another's in its log: a figure would be read as another's.
    args = encoding_args(
        {"mp3": Path("a.mp3"), "ogg": Path("b.ogg"), "wav": Path("c.wav")},
        sample_rate=24000,
        mp3_bitrate="128k",
        filters="volume=1dB",
        measure=("mp3", "ogg", "wav"),
        fed=True,
    )
    graphs = [args[i + 1] for i, arg in enumerate(args) if arg == "-filter_complex"]
    metering = [graph for graph in graphs if "ebur128" in graph]
    assert len(metering) == 1
    named = [name for name in ("o0", "o1", "o2", FED_METER) if f"ebur128@{name}=" in metering[0]]
    assert named == ["o0", "o1", FED_METER]  # the mp3, the ogg, and what the wav holds
