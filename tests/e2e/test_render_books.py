"""A book and a course file rendered end to end: `plan` lists the chapters, `render` speaks each
with the local engine, and what was sent is the chapters' prose only (no notes, page numbers or
markup), paced by the book's paragraphs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from pipeline.store import create_engine_for
from rime_local.server import RunningEngine
from tests.fixtures.books import write_book
from tests.fixtures.cli import Cli, probe

MANIFEST = """\
job: audiobook
output: out
defaults: {speaker: cove, samplingRate: 22050, formats: [mp3], paragraph_pause_ms: 900,
  max_chars: 60}
scripts:
  - id: book
    text_file: book.epub
  - id: course
    text_file: course.md
    split: headings
    formats: [wav]
"""

COURSE = "# Lesson one\n\nSay *hello* to [the team](https://example.com).\n\n# Lesson two\n\nBye.\n"

CHAPTERS = {
    "book/01-the-storm": "The Storm",
    "book/02-the-letter": "The Letter",
    "book/03-home-again": "Home Again",
    "course/01-lesson-one": "Lesson one",
    "course/02-lesson-two": "Lesson two",
}


def _segments(database_url: str, job_id: str) -> dict[str, list[tuple[str, int]]]:
    """Each script's request texts and the pause after each, from the job table."""
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT s.script_id, g.text, g.pause_after_ms FROM segments g "
                    "JOIN scripts s ON s.id = g.script_pk WHERE g.job_id = :job "
                    'ORDER BY s.position, g."index"'
                ),
                {"job": job_id},
            )
            found: dict[str, list[tuple[str, int]]] = {}
            for script_id, text, pause in rows:
                found.setdefault(script_id, []).append((text, pause))
            return found
    finally:
        engine.dispose()


def test_a_book_and_a_course_render_one_output_per_chapter(
    cli: Cli, database_url: str, engine_factory: Callable[..., RunningEngine], tmp_path: Path
) -> None:
    engine = engine_factory()
    run = cli.using(engine=engine, database_url=database_url)
    write_book(tmp_path / "book.epub")
    (tmp_path / "course.md").write_text(COURSE, encoding="utf-8")
    (tmp_path / "jobs.yaml").write_text(MANIFEST, encoding="utf-8")

    planned = run.run("plan", "jobs.yaml")
    rendered = run.run("render", "jobs.yaml")

    assert planned.returncode == 0, planned
    for script_id, title in CHAPTERS.items():
        assert re.search(rf"{re.escape(script_id)}\s+│\s+{re.escape(title)}\s+│", planned.stdout)
    assert rendered.returncode == 0, rendered
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [s["id"] for s in results["scripts"]] == list(CHAPTERS)
    for script_id in CHAPTERS:
        ext = "wav" if script_id.startswith("course") else "mp3"
        audio = probe(tmp_path / "out" / f"{script_id}.{ext}")
        assert audio.seconds > 1.0, script_id

    job_id = results["job_id"]
    segments = _segments(database_url, job_id)
    sent = " ".join(text for texts in segments.values() for text, _ in texts)
    # The book's notes and page number, and Markdown's syntax and link target, were never sent.
    assert not re.search(r"three days|grandmother|example\.com|[*\[\]<>{}]|\b2\b", sent), sent
    assert segments["book/01-the-storm"][0] == ("Chapter One", 900)
    # Cut where the book has its paragraphs, each followed by the paragraph pause.
    assert [t for t, _ in segments["book/01-the-storm"]] == [
        "Chapter One",
        "The rain had stopped by noon. The street was quiet again.",
        "Anna opened the window.\nA cold breeze filled the room.",
    ]
    assert segments["course/01-lesson-one"] == [("Lesson one\n\nSay hello to the team.", 0)]
    assert engine.metrics()["characters"] >= sum(len(t) for t in sent.split())
