"""A book from a job's stitched chapters: an M4B with chapter marks, tagged MP3s, a playlist.

Every chapter comes from its script's lossless WAV in the release (an output, or the unlisted
copy the plan asks for: `OutputSpec.lossless_copy`), so nothing is encoded twice lossily. One
ffmpeg run decodes every chapter once and writes all the files: the chapters concatenated at the
highest chapter rate into AAC in MP4 (ffmpeg's native encoder), with FFMETADATA chapters and the
cover as an attached picture, and each chapter alone into an MP3 at its script's bitrate, which
mutagen then tags (ID3v2.4: title, album, artist, album artist, composer = narrator, track n/N,
year, genre, cover). The playlist lists the MP3s with their durations and titles.

Chapter marks are where each chapter's first sample lands: the sum of the chapters before it,
counted in samples. The MP4 muxer writes an edit list that hides the AAC encoder's priming
samples, so a player (and ffmpeg decoding the file) puts sample 0 of the first chapter at 0 and
every mark lands on its chapter (tests/e2e/test_book.py finds each start in the decoded M4B).
Every file is written under a temporary name and renamed into place once all of them exist.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pipeline import wav
from pipeline.audio import AudioError, ffmpeg_exe
from pipeline.files import atomic_write, fsync_path, sha256_file, temp_path_for
from pipeline.plan import BookPlan
from pipeline.storage.keys import book_keys

AAC_BITRATE = "64k"  # mono speech: transparent for narration, about 29 MB an hour
GENRE = "Audiobook"
# MP4's "stik" media type for an audiobook, which Apple's players file under Books.
MP4_AUDIOBOOK = "2"

CONTENT_TYPES = {"m4b": "audio/mp4", "mp3": "audio/mpeg", "m3u": "audio/x-mpegurl"}


class BookError(AudioError):
    """A book could not be assembled."""


@dataclass(frozen=True)
class ChapterSource:
    """A chapter's lossless audio and how its own MP3 is encoded."""

    path: Path
    mp3_bitrate: str = "128k"


@dataclass(frozen=True)
class ChapterTime:
    """Where a chapter sits in the M4B, and its own MP3."""

    script_id: str
    title: str
    start_seconds: float
    duration_seconds: float
    mp3: str  # its key in the release


@dataclass(frozen=True)
class AssembledFile:
    """One file of the book, at `key` under the folder it was assembled into."""

    format: str  # m4b | mp3 | m3u
    key: str
    path: Path
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Assembled:
    """Every file of a book and its chapters' times."""

    files: tuple[AssembledFile, ...]
    chapters: tuple[ChapterTime, ...]
    sample_rate: int


def wav_frames(path: Path) -> tuple[int, int]:
    """(sampling rate, sample frames) of a PCM WAV, read from its header without loading it."""
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            # parse only indexes and slices: a map of the file serves as its bytes.
            info = wav.parse(cast(bytes, mm))
    except (OSError, ValueError) as exc:
        raise BookError(f"cannot read chapter audio {path.name}: {exc}") from exc
    if info.format_tag != wav.FORMAT_PCM or info.bits != 16:
        raise BookError(f"chapter audio {path.name} is not 16-bit PCM")
    return info.sampling_rate, info.frames


def escape_ffmetadata(value: str) -> str:
    """`value` as an FFMETADATA value: '=', ';', '#', '\\' and line breaks escaped."""
    out = []
    for ch in value:
        if ch in "=;#\\\n":
            out.append("\\")
        out.append(ch)
    return "".join(out)


def ffmetadata(book: BookPlan, times: Sequence[ChapterTime], rate: int) -> str:
    """The FFMETADATA file of the M4B: the book's tags and one chapter per script, in samples
    at `rate` (each chapter ends where the next starts)."""
    tags = {
        "title": book.title,
        "album": book.title,
        "artist": book.author,
        "album_artist": book.author,
        "composer": book.narrator,
        "date": book.year,
        "genre": GENRE,
        "media_type": MP4_AUDIOBOOK,
    }
    lines = [";FFMETADATA1"]
    lines += [f"{k}={escape_ffmetadata(v)}" for k, v in tags.items() if v is not None]
    for time in times:
        start = round(time.start_seconds * rate)
        end = round((time.start_seconds + time.duration_seconds) * rate)
        lines += [
            "[CHAPTER]",
            f"TIMEBASE=1/{rate}",
            f"START={start}",
            f"END={end}",
            f"title={escape_ffmetadata(time.title)}",
        ]
    return "\n".join(lines) + "\n"


def playlist(book: BookPlan, times: Sequence[ChapterTime], folder: str) -> str:
    """The extended M3U of the chapters' MP3s: paths relative to the playlist, whole seconds."""
    lines = ["#EXTM3U", f"#PLAYLIST:{_one_line(book.title)}"]
    who = f"{_one_line(book.author)} - " if book.author else ""
    for time in times:
        lines.append(f"#EXTINF:{round(time.duration_seconds)},{who}{_one_line(time.title)}")
        lines.append(time.mp3.removeprefix(f"{folder}/"))
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def chapter_times(book: BookPlan, frames: Sequence[tuple[int, int]]) -> tuple[ChapterTime, ...]:
    """Each chapter's start and duration from its (rate, frames), in order."""
    _, _, mp3s = book_keys(book.folder, book.title, (c.title for c in book.chapters))
    times = []
    start = 0.0
    for chapter, (rate, count), mp3 in zip(book.chapters, frames, mp3s, strict=True):
        duration = count / rate
        times.append(ChapterTime(chapter.script_id, chapter.title, start, duration, mp3))
        start += duration
    return tuple(times)


def assemble(book: BookPlan, sources: Sequence[ChapterSource], directory: Path) -> Assembled:
    """Write the book's files under `directory` (each at its key) from the chapters' sources."""
    if len(sources) != len(book.chapters) or not sources:
        raise BookError(f"the book has {len(book.chapters)} chapters but {len(sources)} sources")
    frames = [wav_frames(s.path) for s in sources]
    rate = max(r for r, _ in frames)
    times = chapter_times(book, frames)
    m4b_key, m3u_key, mp3_keys = book_keys(
        book.folder, book.title, (c.title for c in book.chapters)
    )
    targets = {key: directory.joinpath(*key.split("/")) for key in (m4b_key, *mp3_keys)}
    temps = {key: temp_path_for(path) for key, path in targets.items()}
    for path in targets.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="rime-batch-book-") as scratch:
            cmd = _command(book, sources, times, frames, rate, Path(scratch))
            cmd += _outputs(sources, temps[m4b_key], [temps[k] for k in mp3_keys])
            _run(cmd)
        for number, (time, key) in enumerate(zip(times, mp3_keys, strict=True), start=1):
            tag_mp3(temps[key], book, time.title, number, len(times))
        for key, temp in temps.items():
            fsync_path(temp)
            os.replace(temp, targets[key])
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    m3u_path = directory.joinpath(*m3u_key.split("/"))
    atomic_write(m3u_path, lambda fh: fh.write(playlist(book, times, book.folder).encode()))
    for folder in {p.parent for p in targets.values()}:
        fsync_path(folder)
    formats = {m4b_key: "m4b", m3u_key: "m3u"}
    written = [(m4b_key, targets[m4b_key]), *((k, targets[k]) for k in mp3_keys)]
    files = tuple(
        AssembledFile(formats.get(key, "mp3"), key, path, sha256_file(path), path.stat().st_size)
        for key, path in [*written, (m3u_key, m3u_path)]
    )
    return Assembled(files, times, rate)


def _command(
    book: BookPlan,
    sources: Sequence[ChapterSource],
    times: Sequence[ChapterTime],
    frames: Sequence[tuple[int, int]],
    rate: int,
    scratch: Path,
) -> list[str]:
    """The inputs of the one ffmpeg run, and the M4B's stream from every chapter decoded once."""
    meta = scratch / "chapters.txt"
    meta.write_text(ffmetadata(book, times, rate), encoding="utf-8")
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-v", "error"]
    for source in sources:
        cmd += ["-i", str(source.path)]
    n = len(sources)
    cmd += ["-f", "ffmetadata", "-i", str(meta)]
    if book.cover is not None:
        suffix = ".png" if book.cover_type == "image/png" else ".jpg"
        cover = scratch / f"cover{suffix}"
        cover.write_bytes(book.cover)
        cmd += ["-i", str(cover)]
    # Each chapter brought to the book's rate (most already are), then end to end.
    resampled = "".join(
        f"[{i}:a]aresample={rate}[a{i}];" if r != rate else f"[{i}:a]anull[a{i}];"
        for i, (r, _) in enumerate(frames)
    )
    joined = "".join(f"[a{i}]" for i in range(n))
    cmd += ["-filter_complex", f"{resampled}{joined}concat=n={n}:v=0:a=1[book]"]
    cmd += ["-map", "[book]"]
    if book.cover is not None:
        cmd += ["-map", f"{n + 1}:v", "-c:v", "copy", "-disposition:v:0", "attached_pic"]
    cmd += ["-map_metadata", str(n), "-map_chapters", str(n)]
    cmd += ["-c:a", "aac", "-b:a", AAC_BITRATE, "-ac", "1", "-movflags", "+faststart"]
    return cmd


def _outputs(sources: Sequence[ChapterSource], m4b: Path, mp3s: Sequence[Path]) -> list[str]:
    """The output files of the run: the M4B (its streams mapped before), then each chapter's
    MP3 straight from its decoded input."""
    cmd = ["-f", "ipod", "-y", str(m4b)]
    for i, (source, mp3) in enumerate(zip(sources, mp3s, strict=True)):
        # bitexact: no encoder version in the file, so the same audio gives the same bytes.
        cmd += ["-map", f"{i}:a", "-map_metadata", "-1", "-map_chapters", "-1"]
        cmd += ["-fflags", "+bitexact", "-flags:a", "+bitexact"]
        cmd += ["-c:a", "libmp3lame", "-b:a", source.mp3_bitrate, "-f", "mp3", "-y", str(mp3)]
    return cmd


def _run(cmd: list[str]) -> None:
    # A session of its own: Ctrl-C at the terminal is ours to handle, not ffmpeg's.
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False, start_new_session=True
    )
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise BookError(f"ffmpeg could not assemble the book (exit {proc.returncode}): {detail}")


def decode_to_wav(path: Path, out: Path) -> Path:
    """`path` (any audio ffmpeg reads) decoded to a mono 16-bit PCM WAV at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-i", str(path)]
    _run([*cmd, "-map", "0:a:0", "-ac", "1", "-c:a", "pcm_s16le", "-f", "wav", "-y", str(out)])
    return out


def tag_mp3(path: Path, book: BookPlan, title: str, number: int, total: int) -> None:
    """Write a chapter MP3's ID3v2.4 tags: chapter, book, people, track n/N, year, cover."""
    from mutagen.id3 import APIC, ID3, TALB, TCOM, TCON, TDRC, TIT2, TPE1, TPE2, TRCK, PictureType

    tags = ID3()
    tags.add(TIT2(encoding=3, text=title))
    tags.add(TALB(encoding=3, text=book.title))
    tags.add(TRCK(encoding=3, text=f"{number}/{total}"))
    tags.add(TCON(encoding=3, text=GENRE))
    if book.author:
        tags.add(TPE1(encoding=3, text=book.author))
        tags.add(TPE2(encoding=3, text=book.author))
    if book.narrator:
        tags.add(TCOM(encoding=3, text=book.narrator))
    if book.year:
        tags.add(TDRC(encoding=3, text=book.year))
    if book.cover is not None:
        tags.add(
            APIC(
                encoding=3,
                mime=book.cover_type or "image/jpeg",
                type=PictureType.COVER_FRONT,
                desc="Cover",
                data=book.cover,
            )
        )
    try:
        tags.save(path, v2_version=4)
    except Exception as exc:
        raise BookError(f"cannot tag {path.name}: {exc}") from exc
