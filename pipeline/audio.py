"""PCM in and out: decode a segment file, measure loudness, encode outputs.

Audio inside the pipeline is mono float32 in [-1, 1) at the script's sampling rate. What Python
does as well as ffmpeg, and byte for byte the same, is done here without a process: reading the
segment cache's PCM WAV, writing PCM WAV and 8 kHz mu-law. The rest (MP3, Opus, resampling,
loudness) goes through ffmpeg, from the imageio-ffmpeg wheel; there is no ffprobe, so every
decode asks ffmpeg for raw s16le at a known rate and channel count instead of probing.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import suppress
from functools import lru_cache
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt

from pipeline import wav
from pipeline.errors import RimeBatchError
from pipeline.files import create_temp, fsync_path, temp_path_for
from pipeline.g711 import encode_mulaw
from pipeline.loudness import Leveling, Loudness

Samples = npt.NDArray[np.float32]
Pcm16 = npt.NDArray[np.int16]

FULL_SCALE = 32768.0  # int16 full scale
SAMPLE_WIDTH = 2
TELEPHONY_RATE = 8000  # G.711 mu-law is defined at 8 kHz
OPUS_RATE = 48000  # Ogg/Opus always decodes at 48 kHz; encode there to avoid a second resample
OPUS_BITRATE = "64k"  # transparent for mono speech
# EBU R128 gates out everything below -70 LUFS: a measurement there means "silence".
ABSOLUTE_GATE_LUFS = -70.0

_STDERR_TAIL = 2000


class AudioError(RimeBatchError):
    """Audio could not be decoded, measured or encoded."""


class DecodeError(AudioError):
    """A segment file is not audio ffmpeg can decode."""


class EncodeError(AudioError):
    """ffmpeg failed while measuring or encoding."""


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped in the imageio-ffmpeg wheel."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def decode(path: Path, sample_rate: int) -> Samples:
    """The whole file as mono float32 at `sample_rate` (one segment, so it fits in memory)."""
    pcm = _read_plain_wav(path, sample_rate)
    if pcm is None:
        pcm = _ffmpeg_decode(path, sample_rate)
    return pcm.astype(np.float32) / np.float32(FULL_SCALE)


def to_pcm16(samples: Samples, gain: float = 1.0) -> bytes:
    """Little-endian 16-bit PCM of `samples` times `gain`, rounded and clipped."""
    scaled = np.rint(samples * np.float32(gain * FULL_SCALE))
    pcm: Pcm16 = np.clip(scaled, -32768, 32767).astype("<i2")
    return pcm.tobytes()


def _read_plain_wav(path: Path, sample_rate: int) -> Pcm16 | None:
    """Samples of a 16-bit mono PCM WAV at `sample_rate`, without ffmpeg; None for anything else.

    This is what the segment cache holds, so the common case skips a process start.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DecodeError(f"cannot read segment audio {path.name}: {exc.strerror}") from exc
    try:
        info = wav.parse(data)
    except wav.WavError:
        return None  # ffmpeg makes what it can of it, or says why not
    if not info.is_pcm16_mono(sample_rate):
        return None
    return np.frombuffer(data, dtype="<i2", count=info.data_bytes // 2, offset=info.data_offset)


def _ffmpeg_decode(path: Path, sample_rate: int) -> Pcm16:
    cmd = [
        ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-i",
        str(path),
        "-map",
        "0:a:0",
        "-ac",
        "1",
        "-ar",
        str(sample_rate),
        "-f",
        "s16le",
        "pipe:1",
    ]
    # A session of its own: Ctrl-C at the terminal is ours to handle, not ffmpeg's.
    proc = subprocess.run(cmd, capture_output=True, check=False, start_new_session=True)
    if proc.returncode != 0:
        detail = _tail(proc.stderr.decode(errors="replace"))
        raise DecodeError(f"cannot decode segment audio {path.name}: {detail}")
    return np.frombuffer(proc.stdout, dtype="<i2")


_INTEGRATED = re.compile(r"I:\s+(-?inf|-?[\d.]+) LUFS")
_RANGE = re.compile(r"LRA:\s+(-?inf|-?[\d.]+) LU\b")
_TRUE_PEAK = re.compile(r"True peak:\s+Peak:\s+(-?inf|-?[\d.]+) dBFS")
_NAMED_SUMMARY = re.compile(r"\[ebur128@(\w+) @ [^\]]*\] Summary:")
# The limiter runs at least this fast: at 4x a speech rate (and 2x at 44.1 or 48 kHz) the
# peaks between samples are seen well enough for the true peak to hold within 0.1 dB.
LIMITER_MIN_RATE = 88200
LIMITER_ATTACK_MS = 5.0  # alimiter's default: quick enough for plosives
LIMITER_RELEASE_MS = 50.0


def parse_ebur128_summary(log: str) -> Loudness:
    """Integrated loudness, loudness range and true peak from ebur128's last summary in `log`."""
    start = log.rfind("Summary:")
    return _summary(log[start:] if start >= 0 else "", log)


def parse_ebur128_summaries(log: str) -> dict[str, Loudness]:
    """Each named ebur128's summary in `log` (`ebur128@NAME`), by name.

    One ffmpeg run that measures several streams prints their summaries in whatever order its
    filters finish; the instance name in each line's prefix says whose it is.
    """
    heads = list(_NAMED_SUMMARY.finditer(log))
    ends = [head.start() for head in heads[1:]] + [len(log)] * bool(heads)
    bodies = zip(heads, ends, strict=True)
    return {head[1]: _summary(log[head.end() : end], log) for head, end in bodies}


def _summary(body: str, log: str) -> Loudness:
    integrated = _INTEGRATED.search(body)
    if integrated is None:
        raise EncodeError(f"no loudness summary in ffmpeg's output: {_tail(log)}")
    lufs = float(integrated[1])
    lra = _RANGE.search(body)
    peak = _TRUE_PEAK.search(body)
    peak_db = float(peak[1]) if peak is not None else None
    silent = not lufs > ABSOLUTE_GATE_LUFS
    return Loudness(
        integrated_lufs=None if silent else lufs,
        true_peak_dbtp=peak_db if peak_db is not None and np.isfinite(peak_db) else None,
        range_lu=None if silent or lra is None else float(lra[1]),
    )


def leveling_filter(leveling: Leveling, sample_rate: int, *, oversample: bool = True) -> str:
    """The ffmpeg filter chain that applies `leveling` to mono audio at `sample_rate`.

    The limiter looks ahead, and `latency=1` gives its delay back, so every sample stays
    where it was (captions and chapter marks rely on it); `level=0` keeps it from making up
    gain of its own. It runs oversampled so that it holds the true peak, not only the samples;
    `oversample=False` is the cheap copy the gain search measures loudness through (the peaks
    between samples it misses weigh nothing in integrated loudness).
    """
    chain = f"volume={leveling.gain_db:.4f}dB:precision=double"
    if leveling.limit_dbtp is None:
        return chain
    factor = -(-LIMITER_MIN_RATE // sample_rate) if oversample else 1  # ceiling division
    limiter = _alimiter(leveling.limit_dbtp)
    if factor <= 1:
        return f"{chain},{limiter}"
    return f"{chain},aresample={sample_rate * factor},{limiter},aresample={sample_rate}"


def _alimiter(limit_dbtp: float) -> str:
    limit = 10.0 ** (limit_dbtp / 20.0)
    return (
        f"alimiter=limit={limit:.6f}:attack={LIMITER_ATTACK_MS:g}:release={LIMITER_RELEASE_MS:g}"
        ":level=0:latency=1"
    )


def _ebur128(peak: bool, name: str | None = None) -> str:
    meter = "ebur128" if name is None else f"ebur128@{name}"
    return f"{meter}=peak=true:framelog=quiet" if peak else f"{meter}=framelog=quiet"


def measure_loudness(
    chunks: Iterable[Samples],
    sample_rate: int,
    *,
    filters: str | None = None,
    peak: bool = True,
) -> Loudness:
    """Integrated loudness, range and true peak of the concatenated `chunks`, streamed through
    ffmpeg, after `filters` when given (`peak=False` skips the true peak, the costly part)."""
    # ebur128 is several times faster than loudnorm's measuring mode, which resamples to 192 kHz.
    graph = _ebur128(peak) if filters is None else f"{filters},{_ebur128(peak)}"
    cmd = [
        ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-v",
        "info",
        *_raw_input("s16le", sample_rate),
        "-af",
        graph,
        "-f",
        "null",
        "-",
    ]
    # 16-bit, as the encoder is fed: the very samples it will get, in half the bytes of f32.
    log = _run_ffmpeg(cmd, (to_pcm16(chunk) for chunk in chunks))
    return parse_ebur128_summary(log)


def encoder_args(fmt: str, *, sample_rate: int, mp3_bitrate: str) -> list[str]:
    """ffmpeg output options that produce format `fmt` from mono PCM at `sample_rate`."""
    match fmt:
        case "wav":
            # Past 4 GiB (12 hours at 48 kHz) a plain WAV header overflows; RF64 takes over.
            return ["-c:a", "pcm_s16le", "-rf64", "auto", "-f", "wav"]
        case "wav-mulaw":
            # No RF64 reservation: telephony players want the plain header, and 4 GiB at
            # 8 kB/s is 149 hours.
            return ["-ar", str(TELEPHONY_RATE), "-c:a", "pcm_mulaw", "-f", "wav"]
        case "mulaw":
            return ["-ar", str(TELEPHONY_RATE), "-c:a", "pcm_mulaw", "-f", "mulaw"]
        case "mp3":
            # libmp3lame picks the nearest MPEG rate and caps the bitrate for low rates itself.
            return ["-c:a", "libmp3lame", "-b:a", mp3_bitrate, "-f", "mp3"]
        case "ogg":
            return ["-ar", str(OPUS_RATE), "-c:a", "libopus", "-b:a", OPUS_BITRATE, "-f", "ogg"]
    raise AudioError(f"unknown output format {fmt!r}")


class _NativeFile:
    """An output this process writes itself: its header (sized at the end), then its samples.

    Byte for byte what ffmpeg writes for the same samples (see `pipeline.wav`, `pipeline.g711`).
    """

    def __init__(self, fmt: str, path: Path, sample_rate: int) -> None:
        self.fmt = fmt
        self.sample_rate = sample_rate
        self.samples = 0
        self.handle = os.fdopen(create_temp(path), "wb")
        self.handle.write(self._header())  # the same length once the size is known

    def _header(self) -> bytes:
        if self.fmt == "wav":
            return wav.pcm16_header(self.sample_rate, self.samples * SAMPLE_WIDTH)
        if self.fmt == "wav-mulaw":
            return wav.mulaw_header(self.sample_rate, self.samples)
        return b""

    def write(self, pcm: bytes) -> None:
        """Append 16-bit PCM samples, encoded as this format stores them."""
        self.handle.write(pcm if self.fmt == "wav" else encode_mulaw(pcm))
        self.samples += len(pcm) // SAMPLE_WIDTH

    def finish(self) -> None:
        """Write the real header and make the file durable."""
        if self.fmt == "wav-mulaw":
            self.handle.write(wav.pad_bytes(self.samples))
        self.handle.seek(0)
        self.handle.write(self._header())
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


def written_here(fmt: str, sample_rate: int) -> bool:
    """Whether `fmt` is encoded in Python at this rate (no resampling needed, so no ffmpeg)."""
    return fmt == "wav" or (fmt in ("wav-mulaw", "mulaw") and sample_rate == TELEPHONY_RATE)


def holds_the_feed(fmt: str) -> bool:
    """Whether a file of `fmt` holds the very samples the encoders are fed (16-bit PCM at the
    programme's rate), so that it measures what they measure; any other format is measured
    from what its encoder made of them."""
    return fmt == "wav"


def encode(
    chunks: Iterable[bytes],
    *,
    sample_rate: int,
    outputs: Mapping[str, Path],
    mp3_bitrate: str = "128k",
    filters: str | None = None,
    measure: Collection[str] = (),
) -> dict[str, Loudness]:
    """Encode 16-bit PCM `chunks` into every format of `outputs`, in one pass over them.

    PCM WAV, and mu-law at 8 kHz, are written here; everything else by one ffmpeg process fed
    the same chunks, which decodes them once and splits them to every encoder. With `filters`
    (a limiter), every format goes through that process, after the filters. The same process
    measures each format of `measure` and their figures are returned: a WAV by what the
    encoders get (ebur128 on one more branch of the split), any other format (mu-law too,
    which then goes through ffmpeg) by decoding what its encoder produced (see
    `encoding_args`). Each file is written under a temporary name beside its target and
    renamed into place only when every encoder has finished cleanly, so a reader never sees a
    partial file.
    """
    chunks, empty = _peeked(chunks)
    measured: dict[str, Loudness] = {}
    if empty and measure:
        # No sample, no packet: a loopback decoder would never start, and ffmpeg fails.
        measured = {fmt: Loudness(None, None) for fmt in measure}
        measure = ()
    temps = {fmt: temp_path_for(path) for fmt, path in outputs.items()}
    piped = {
        fmt: temp
        for fmt, temp in temps.items()
        if filters is not None
        or not written_here(fmt, sample_rate)
        or (fmt in measure and not holds_the_feed(fmt))
    }
    fed = any(holds_the_feed(fmt) for fmt in measure)
    native: list[_NativeFile] = []
    try:
        native = [
            _NativeFile(fmt, temp, sample_rate) for fmt, temp in temps.items() if fmt not in piped
        ]

        def tee() -> Iterator[bytes]:
            for chunk in chunks:
                for out in native:
                    out.write(chunk)
                yield chunk

        if piped or fed:
            cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats"]
            cmd += ["-v", "info" if measure else "error", *_raw_input("s16le", sample_rate)]
            cmd += encoding_args(
                piped,
                sample_rate=sample_rate,
                mp3_bitrate=mp3_bitrate,
                filters=filters,
                measure=measure,
                fed=fed,
            )
            log = _run_ffmpeg(cmd, tee())
            if measure:
                figures = parse_ebur128_summaries(log)
                encoded = {fmt: meter_name(index) for index, fmt in enumerate(piped)}
                for fmt in measure:
                    measured[fmt] = figures[FED_METER if holds_the_feed(fmt) else encoded[fmt]]
            for temp in piped.values():
                fsync_path(temp)
        else:
            for _ in tee():
                pass
        for out in native:
            out.finish()
        for fmt, temp in temps.items():
            os.replace(temp, outputs[fmt])
        for folder in {path.parent for path in outputs.values()}:
            fsync_path(folder)
    finally:
        for out in native:
            out.handle.close()
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    return measured


def _peeked(chunks: Iterable[bytes]) -> tuple[Iterator[bytes], bool]:
    """`chunks` without empty ones, and whether there are none at all."""
    rest = (chunk for chunk in chunks if chunk)
    first = next(rest, None)
    return (rest, True) if first is None else (itertools.chain([first], rest), False)


# The meter of the split's own branch: what every encoder is fed.
FED_METER = "fed"


def meter_name(index: int) -> str:
    """The ebur128 instance that measures the `index`th encoder's output."""
    return f"o{index}"


def encoding_args(
    piped: Mapping[str, Path],
    *,
    sample_rate: int,
    mp3_bitrate: str,
    filters: str | None,
    measure: Collection[str],
    fed: bool,
) -> list[str]:
    """ffmpeg's options after its input, for one run that encodes every format of `piped`.

    Each format of `measure` but a WAV is decoded again in the same run (a
    loopback decoder, `-dec`, ffmpeg 7 and later) and measured by its own ebur128
    (`meter_name`); with `fed`, the split's own branch is measured too (`FED_METER`), through a
    lossless encoder and a loopback decoder of its own.

    Every meter is in one filter graph, which ffmpeg runs on one thread, apart from the
    encoders: meters in graphs of their own print their summaries from threads of their own,
    and ffmpeg's log then interleaves them, a line of one under the head of another, so a
    figure could be read as another output's.
    """
    args = ["-filter_complex", split_graph(filters, len(piped), fed)]
    for index, (fmt, path) in enumerate(piped.items()):
        # bitexact keeps encoder version strings and random Ogg serials out of the files, so
        # the same input gives the same bytes.
        args += ["-map", f"[o{index}]", "-map_metadata", "-1", "-fflags", "+bitexact"]
        args += ["-flags:a", "+bitexact"]
        args += encoder_args(fmt, sample_rate=sample_rate, mp3_bitrate=mp3_bitrate)
        args += ["-y", str(path)]
    meters = {
        meter_name(index): index
        for index, fmt in enumerate(piped)
        if fmt in measure and not holds_the_feed(fmt)
    }
    if fed:
        # Doubles, as the split gives them: the fed meter sees exactly what the encoders get.
        args += ["-map", "[m]", "-c:a", "pcm_f64le", "-f", "null", "-"]
        meters[FED_METER] = len(piped)
    for output in meters.values():
        args += ["-dec", f"{output}:0"]  # that output's stream 0, decoded as it is muxed
    chains = [
        f"[dec:{loop}]{_ebur128(peak=True, name=name)}[{name}]" for loop, name in enumerate(meters)
    ]
    if chains:
        args += ["-filter_complex", ";".join(chains)]
    for name in meters:
        args += ["-map", f"[{name}]", "-f", "null", "-"]
    return args


def split_graph(filters: str | None, outputs: int, measure: bool) -> str:
    """The filter graph of an encode: the input through `filters`, split to each encoder
    (`[o0]`, `[o1]`, ...) and, when measuring what they are fed, to `[m]`."""
    labels = [f"[o{index}]" for index in range(outputs)] + (["[m]"] if measure else [])
    head = f"[0:a]{filters or 'anull'}"
    return f"{head},asplit={len(labels)}{''.join(labels)}" if len(labels) > 1 else head + labels[0]


def _raw_input(sample_format: str, sample_rate: int) -> list[str]:
    return ["-f", sample_format, "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0"]


def _run_ffmpeg(cmd: list[str], chunks: Iterable[bytes]) -> str:
    """Run ffmpeg on `chunks` written to its stdin; its log, or EncodeError if it failed.

    The log goes to a temporary file rather than a pipe: a full pipe would block ffmpeg while
    we block writing its stdin. Any error while producing `chunks` kills ffmpeg.
    """
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,  # Ctrl-C must not kill it mid-file: we decide
        )
        assert proc.stdin is not None
        cut = False
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            cut = True  # ffmpeg went away; its exit code and log say why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            with suppress(BrokenPipeError):
                proc.stdin.close()
        returncode = proc.wait()
        text = _read_log(log)
    if returncode != 0 or cut:
        raise EncodeError(f"ffmpeg exited with {returncode}: {_tail(text)}")
    return text


def _read_log(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _STDERR_TAIL else "..." + text[-_STDERR_TAIL:]
