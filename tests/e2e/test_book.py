"""`render` of a manifest with a `book:`: the local engine's real speech, real ffmpeg, and the
files read back as a player would (ffmpeg for the M4B's chapters and audio, mutagen for tags)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from mutagen.id3 import ID3
from mutagen.mp4 import MP4

from pipeline.files import sha256_file
from rime_local.server import RunningEngine
from tests.e2e.test_render import KEY, write
from tests.fixtures.cli import Cli, probe
from tests.fixtures.s3 import S3Env

EngineFactory = Callable[..., RunningEngine]

BOOK = """\
job: lighthouse
output: out
defaults:
  speaker: cove
  samplingRate: 24000
  formats: [mp3]
book:
  title: The Lighthouse Keeper
  author: Ada Writer
  narrator: Ben Reader
  year: 2026
  cover: art/cover.jpg
  scripts: [front/intro, "chapters/*"]
scripts:
  - id: chapters/one
    title: "Chapter One: The Storm"
    text: |
      The storm came in from the west. The keeper climbed the stairs. <600>

      He lit the great lamp and waited.
  - id: front/intro
    title: Introduction
    formats: [wav]
    text: This is the story of a lighthouse and the man who kept it.
  - id: chapters/two
    title: "Chapter Two: Morning"
    samplingRate: 22050
    text: By morning the sea was calm. A small boat rowed toward the rocks.
  - id: ivr/unrelated
    text: This prompt is not part of the book.
"""
TITLES = ["Introduction", "Chapter One: The Storm", "Chapter Two: Morning"]
RATE = 24000  # the book's: its highest chapter rate
WINDOW_S = 0.1  # how far from its mark a chapter's start is looked for
PROBE_S = 0.4  # how much of a chapter's own audio is looked for


def ffmpeg(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-v", "error", *map(str, args)],
        capture_output=True,
        check=True,
        timeout=60,
    )


def decoded(path: Path, rate: int = RATE) -> np.ndarray:
    """`path` as mono float samples at `rate`, as ffmpeg decodes it."""
    pcm = ffmpeg("-i", path, "-map", "0:a:0", "-ac", "1", "-ar", rate, "-f", "s16le", "-").stdout
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float64)


def chapters_of(m4b: Path) -> list[tuple[str, float, float]]:
    """(title, start, end) of each chapter the file carries, read back with ffmpeg."""
    text = ffmpeg("-i", m4b, "-f", "ffmetadata", "-").stdout.decode()
    found = []
    for block in text.split("[CHAPTER]")[1:]:
        fields = dict(line.split("=", 1) for line in block.strip().splitlines() if "=" in line)
        num, den = (int(n) for n in fields["TIMEBASE"].split("/"))
        found.append(
            (
                fields["title"],
                int(fields["START"]) * num / den,
                int(fields["END"]) * num / den,
            )
        )
    return found


def located_start(book: np.ndarray, chapter: np.ndarray, mark: float) -> float:
    """Where the first `PROBE_S` of `chapter` best matches the book's audio near `mark`."""
    probe_len = round(PROBE_S * RATE)
    ref = chapter[:probe_len]
    lo = max(0, round((mark - WINDOW_S) * RATE))
    window = book[lo : round((mark + WINDOW_S) * RATE) + probe_len]
    scores = np.correlate(window, ref, mode="valid")
    energy = np.sqrt(np.convolve(window**2, np.ones(probe_len), mode="valid"))
    lag = int(np.argmax(scores / np.maximum(energy, 1e-9)))
    return (lo + lag) / RATE


def test_a_book_renders_to_an_m4b_with_chapters_tagged_mp3s_and_a_playlist(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    write(tmp_path, BOOK)
    (tmp_path / "art").mkdir()
    ffmpeg(
        "-f", "lavfi", "-i", "color=c=navy:s=300x300", "-frames:v", "1", tmp_path / "art/cover.jpg"
    )
    cover = (tmp_path / "art/cover.jpg").read_bytes()

    planned = cli.run("plan", "jobs.yaml")
    result = cli.using(engine=engine, api_key=KEY).run("render", "jobs.yaml")

    assert planned.returncode == 0, planned
    assert (
        "book 'The Lighthouse Keeper': 3 chapters -> book/the-lighthouse-keeper.m4b, "
        "book/the-lighthouse-keeper.m3u, cover image/jpeg"
    ) in planned.stdout
    assert "2. Chapter One: The Storm (chapters/one) -> book/02-chapter-one-the-storm.mp3" in (
        planned.stdout
    )
    assert result.returncode == 0, result
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    status = cli.run("status", results["job_id"])
    assert re.search(r"book: The Lighthouse Keeper\s.*done\s.*3 chapters", status.stdout), status
    book = results["book"]
    assert book["state"] == "done"
    keys = [f["key"] for f in book["outputs"]]
    assert keys == [
        "book/the-lighthouse-keeper.m4b",
        "book/01-introduction.mp3",
        "book/02-chapter-one-the-storm.mp3",
        "book/03-chapter-two-morning.mp3",
        "book/the-lighthouse-keeper.m3u",
    ]
    for file in book["outputs"]:
        assert sha256_file(Path(file["published_uri"])) == file["sha256"]
    m4b = out / keys[0]

    # The chapter marks: titled, in the book's order, each at the end of the ones before it.
    durations = {s["id"]: s["audio_seconds"] for s in results["scripts"]}
    order = ["front/intro", "chapters/one", "chapters/two"]
    marks = chapters_of(m4b)
    assert [title for title, _, _ in marks] == TITLES
    expected = [sum(durations[i] for i in order[:n]) for n in range(3)]
    for (_, start, _), want in zip(marks, expected, strict=True):
        assert abs(start - want) < 0.002
    # ...and each mark is where that chapter's audio really starts in the decoded M4B (the
    # AAC encoder's priming samples hidden by the file's edit list).
    audio = decoded(m4b)
    assert abs(len(audio) / RATE - sum(durations[i] for i in order)) < 0.01
    sources = [out / "front/intro.wav", out / "chapters/one.mp3", out / "chapters/two.mp3"]
    for (title, start, _), source in zip(marks, sources, strict=True):
        found = located_start(audio, decoded(source), start)
        assert abs(found - start) <= 0.010, (title, found, start)

    # The M4B's own tags and cover.
    tags = MP4(m4b).tags
    assert tags is not None
    assert tags["\xa9nam"] == ["The Lighthouse Keeper"]
    assert tags["\xa9ART"] == ["Ada Writer"]
    assert tags["\xa9wrt"] == ["Ben Reader"]
    assert bytes(tags["covr"][0]) == cover

    # Each chapter's MP3, tagged.
    for number, (key, title) in enumerate(zip(keys[1:4], TITLES, strict=True), start=1):
        id3 = ID3(out / key)
        assert str(id3["TIT2"]) == title
        assert str(id3["TALB"]) == "The Lighthouse Keeper"
        assert str(id3["TPE1"]) == str(id3["TPE2"]) == "Ada Writer"
        assert str(id3["TCOM"]) == "Ben Reader"
        assert str(id3["TRCK"]) == f"{number}/3"
        assert str(id3["TDRC"]) == "2026"
        assert id3.getall("APIC")[0].data == cover
        assert probe(out / key).codec == "mp3"

    # The playlist: every chapter, relative paths, whole-second durations.
    lines = (out / keys[4]).read_text(encoding="utf-8").splitlines()
    assert lines[:2] == ["#EXTM3U", "#PLAYLIST:The Lighthouse Keeper"]
    entries = list(zip(lines[2::2], lines[3::2], strict=True))
    assert [path for _, path in entries] == [Path(k).name for k in keys[1:4]]
    for (info, path), title, script in zip(entries, TITLES, order, strict=True):
        found = re.fullmatch(r"#EXTINF:(\d+),Ada Writer - (.+)", info)
        assert found is not None, info
        assert found.group(2) == title
        assert int(found.group(1)) == round(durations[script])
        assert (out / "book" / path).is_file()

    # Only the scripts' own formats are outputs; the book's lossless copies are gone.
    outputs = {s["id"]: [o["format"] for o in s["outputs"]] for s in results["scripts"]}
    assert outputs == {
        "chapters/one": ["mp3"],
        "front/intro": ["wav"],
        "chapters/two": ["mp3"],
        "ivr/unrelated": ["mp3"],
    }
    release = out / "releases" / results["release"]
    assert not (release / "chapters/one.wav").exists()
    assert not (out / "chapters/one.wav").exists()


def test_a_book_naming_an_unknown_script_is_refused_before_anything_is_sent(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    write(
        tmp_path,
        BOOK.replace('"chapters/*"', "chapters/three").replace("  cover: art/cover.jpg\n", ""),
    )

    result = cli.using(engine=engine, api_key=KEY).run("render", "jobs.yaml")

    assert result.returncode != 0
    assert "jobs.yaml:12" in result.stderr
    assert "book.scripts[1]" in result.stderr
    assert "'chapters/three' matches no script" in result.stderr
    assert "Traceback" not in result.stderr
    assert engine.metrics()["requests"] == 0


def test_a_book_on_s3_is_assembled_through_a_scratch_folder_and_published(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path, s3: S3Env, s3_bucket: str
) -> None:
    engine = engine_factory(api_keys=[KEY])
    write(tmp_path, BOOK.replace("  cover: art/cover.jpg\n", ""))
    destination = s3.uri(s3_bucket, "audio")

    result = cli.using(engine=engine, api_key=KEY).run("render", "jobs.yaml", "-o", destination)

    assert result.returncode == 0, result
    root = s3.client.get_object(Bucket=s3_bucket, Key="audio/results.json")
    results = json.loads(root["Body"].read())
    release = f"audio/releases/{results['release']}"
    listed = s3.client.list_objects_v2(Bucket=s3_bucket, Prefix="audio/")
    keys = {o["Key"] for o in listed.get("Contents", [])}
    for file in results["book"]["outputs"]:
        assert f"{release}/{file['key']}" in keys and f"audio/{file['key']}" in keys
        assert file["published_uri"] == f"s3://{s3_bucket}/audio/{file['key']}"
    m4b = s3.client.get_object(Bucket=s3_bucket, Key="audio/book/the-lighthouse-keeper.m4b")
    assert m4b["ContentType"] == "audio/mp4"
    (tmp_path / "book.m4b").write_bytes(m4b["Body"].read())
    assert [title for title, _, _ in chapters_of(tmp_path / "book.m4b")] == TITLES
    # The lossless copies were uploaded for the book and deleted once it was made.
    assert f"{release}/chapters/one.wav" not in keys
    assert f"{release}/front/intro.wav" in keys  # a script's own output stays


EPUB_BOOK = """\
job: small-book
output: out
defaults: {speaker: cove, samplingRate: 24000, formats: [mp3]}
book:
  title: A Small Book
  author: A. Writer
scripts:
  - id: novel
    text_file: the-small-book.epub
"""


def test_an_epub_renders_to_an_m4b_of_its_chapters_with_their_titles_and_tagged_mp3s(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    """The book of the EPUB reader's fixture (three chapters, each a heading, one with a
    footnote and a page break) from manifest to M4B: chapters titled from its contents."""
    from tests.fixtures.books import write_book

    engine = engine_factory(api_keys=[KEY])
    write(tmp_path, EPUB_BOOK)
    write_book(tmp_path / "the-small-book.epub")

    result = cli.using(engine=engine, api_key=KEY).run("render", "jobs.yaml")

    assert result.returncode == 0, result
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    ids = [s["id"] for s in results["scripts"]]
    assert ids == ["novel/01-the-storm", "novel/02-the-letter", "novel/03-home-again"]
    keys = [f["key"] for f in results["book"]["outputs"]]
    titles = ["The Storm", "The Letter", "Home Again"]
    marks = chapters_of(out / keys[0])
    assert [title for title, _, _ in marks] == titles
    durations = [s["audio_seconds"] for s in results["scripts"]]
    audio = decoded(out / keys[0])
    for n, (title, start, _) in enumerate(marks):
        assert abs(start - sum(durations[:n])) < 0.002, title
        found = located_start(audio, decoded(out / f"{ids[n]}.mp3"), start)
        assert abs(found - start) <= 0.010, (title, found, start)
    for number, (key, title) in enumerate(zip(keys[1:4], titles, strict=True), start=1):
        id3 = ID3(out / key)
        assert (str(id3["TIT2"]), str(id3["TALB"]), str(id3["TRCK"])) == (
            title,
            "A Small Book",
            f"{number}/3",
        )
    # What was spoken: each chapter's heading first, no footnote marker or body, no page number.
    from pipeline.plan import plan_manifest

    spoken = [
        " ".join(g.text for g in s.segments) for s in plan_manifest(tmp_path / "jobs.yaml").scripts
    ]
    assert [text.split("\n")[0] for text in spoken] == [
        "Chapter One",
        "Chapter Two",
        "Chapter Three",
    ]
    assert "noon. The street" in spoken[0]
    assert not any("rained for three days" in t or "grandmother" in t for t in spoken)
    assert "2" not in spoken[0]
