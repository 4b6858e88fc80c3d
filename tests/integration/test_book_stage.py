"""The book step of a job (`pipeline.stages.book_stage`) under the embedded executor: our own
synthesizer, the real job table (SQLite and PostgreSQL), a local folder, real ffmpeg."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

from mutagen.id3 import ID3
from sqlalchemy import Engine

from pipeline.diff import PlanDiff, diff_plan
from pipeline.display import diff_lines
from pipeline.files import sha256_file
from pipeline.plan import BookPlan, Chapter, JobPlan
from pipeline.results import results_document
from pipeline.rime.errors import BadRequest
from pipeline.run import run_job
from pipeline.stages import Context, Event, settle_stage
from pipeline.storage.keys import RESULTS_KEY, release_key
from pipeline.store import State, transitions
from pipeline.store.schema import utcnow
from tests.fixtures.jobs import ME, Job, context, job_row, plan_of, record, summary
from tests.fixtures.synthesizers import ToneSynthesizer

RUN_TIMEOUT = 60.0
TITLES = ("Opening", "The Middle", "Closing")


def book_plan(destination: Path) -> JobPlan:
    """Three scripts of two segments, the first and last with an MP3 only (so the book needs
    its lossless copy), the middle one with a WAV; a book of all three."""
    plan = plan_of(
        str(destination), [[f"Chapter {c} line {i}." for i in range(2)] for c in range(3)]
    )
    scripts = tuple(
        replace(s, output=replace(s.output, formats=("wav",) if n == 1 else ("mp3",)))
        for n, s in enumerate(plan.scripts)
    )
    # What build_plan does for a manifest's chapters without a wav output.
    scripts = tuple(
        s if "wav" in s.output.formats else replace(s, output=replace(s.output, lossless_copy=True))
        for s in scripts
    )
    book = BookPlan(
        title="Tones",
        chapters=tuple(Chapter(s.script_id, t) for s, t in zip(scripts, TITLES, strict=True)),
        folder="book",
        author="A. Writer",
        narrator="B. Reader",
        year="2026",
    )
    return replace(plan, scripts=scripts, book=book)


async def run(ctx: Context, job: Job) -> State:
    async with asyncio.timeout(RUN_TIMEOUT):
        return await run_job(ctx, job.job_id, workers=2, stitchers=2)


def test_a_book_is_assembled_before_the_job_is_done_and_published_with_it(
    job_table: Engine, synthesizer: ToneSynthesizer, tmp_path: Path
) -> None:
    job = record(job_table, book_plan(tmp_path))
    events: list[Event] = []

    state = asyncio.run(run(context(job_table, synthesizer, on_event=events.append), job))

    assert state is State.DONE
    done = summary(job_table, job.job_id)
    assert done.book is not None and done.book.state is State.DONE
    assert [f.format for f in done.book.outputs] == ["m4b", "mp3", "mp3", "mp3", "m3u"]
    release = tmp_path / release_key(job.job_id)
    for file in done.book.outputs:
        assert sha256_file(release / file.key) == file.sha256
        # Published: the stable path holds the same file.
        assert sha256_file(tmp_path / file.key) == file.sha256
    # Each chapter starts where the ones before it end, in the scripts' own durations.
    starts = [c["start_seconds"] for c in done.book.chapters]
    durations = [s.audio_seconds or 0.0 for s in done.scripts]
    assert starts == [round(sum(durations[:n]), 3) for n in range(3)]
    assert [c["title"] for c in done.book.chapters] == list(TITLES)
    # The copies made for the book are gone; the middle script's own wav stays, and no script
    # lists a format it did not ask for.
    assert not (release / "script-0.wav").exists() and not (release / "script-2.wav").exists()
    assert (release / "script-1.wav").is_file()
    assert [[o.format for o in s.outputs] for s in done.scripts] == [["mp3"], ["wav"], ["mp3"]]
    third = ID3(release / "book" / "03-closing.mp3")
    assert (str(third["TIT2"]), str(third["TALB"]), str(third["TRCK"])) == (
        "Closing",
        "Tones",
        "3/3",
    )
    written = json.loads((release / RESULTS_KEY).read_bytes())
    assert written == json.loads(json.dumps(results_document(done)))
    assert written["book"]["outputs"][0]["key"] == "book/tones.m4b"
    root = json.loads((tmp_path / RESULTS_KEY).read_bytes())
    assert root["book"]["outputs"][0]["published_uri"] == str(tmp_path / "book/tones.m4b")
    assert [e.outcome for e in events if e.kind == "book"] == ["started", "assembled"]


def test_a_book_that_cannot_be_written_fails_the_job_and_a_resume_assembles_it(
    job_table: Engine, synthesizer: ToneSynthesizer, tmp_path: Path
) -> None:
    job = record(job_table, book_plan(tmp_path))
    # A file where the book's folder goes: the stitches succeed, the book cannot be written.
    blocker = tmp_path / release_key(job.job_id, "book")
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")

    state = asyncio.run(run(context(job_table, synthesizer), job))

    assert state is State.FAILED
    failed = summary(job_table, job.job_id)
    assert [s.state for s in failed.scripts] == [State.DONE] * 3
    assert failed.book is not None and failed.book.state is State.FAILED
    assert job_row(job_table, job.job_id).error.startswith(
        "the book failed: assembling the book failed"
    )
    assert not (tmp_path / "book").exists()  # nothing published
    sent = len(synthesizer.requests)

    blocker.unlink()
    with job_table.begin() as conn:
        transitions.reset_for_resume(conn, job.job_id)
    state = asyncio.run(run(context(job_table, synthesizer), job))

    assert state is State.DONE
    assert len(synthesizer.requests) == sent  # nothing synthesized again
    resumed = summary(job_table, job.job_id)
    assert resumed.book is not None and resumed.book.state is State.DONE
    assert (tmp_path / "book" / "tones.m4b").is_file()
    assert job_row(job_table, job.job_id).error is None


def test_a_job_whose_script_failed_never_assembles_its_book(
    job_table: Engine, synthesizer: ToneSynthesizer, tmp_path: Path
) -> None:
    job = record(job_table, book_plan(tmp_path))
    synthesizer.on_text(job.text(1, 0), BadRequest("unknown speaker 'nobody'", status=400))

    state = asyncio.run(run(context(job_table, synthesizer), job))

    assert state is State.FAILED
    failed = summary(job_table, job.job_id)
    assert failed.book is not None and failed.book.state is State.PENDING
    assert job_row(job_table, job.job_id).error == "1 script(s) failed"
    assert not (tmp_path / release_key(job.job_id, "book")).exists()


def test_a_changed_book_is_a_change_even_when_no_script_changed(
    job_table: Engine, synthesizer: ToneSynthesizer, tmp_path: Path
) -> None:
    plan = book_plan(tmp_path)
    job = record(job_table, plan)
    assert asyncio.run(run(context(job_table, synthesizer), job)) is State.DONE
    assert plan.book is not None

    def diff(again: JobPlan) -> PlanDiff:
        return diff_plan(job_table, again, lambda _: True, concurrency=1)

    same = diff(plan)
    retitled = diff(replace(plan, book=replace(plan.book, title="Tones, Revised")))
    without = diff(replace(plan, book=None))

    assert not same.book_changed and not same.anything
    assert retitled.book_changed and retitled.anything and not retitled.changed
    assert without.book_changed
    assert "  ~ the book (its title, people, cover or chapters)" in diff_lines(
        retitled, scripts=True
    )


def test_a_book_left_by_a_dead_executor_is_taken_over_and_a_live_one_is_not(
    job_table: Engine, synthesizer: ToneSynthesizer, tmp_path: Path
) -> None:
    job = record(job_table, book_plan(tmp_path))
    blocker = tmp_path / release_key(job.job_id, "book")
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    assert asyncio.run(run(context(job_table, synthesizer), job)) is State.FAILED
    blocker.unlink()
    live = context(job_table, synthesizer)
    with job_table.begin() as conn:
        transitions.reset_for_resume(conn, job.job_id)
        transitions.start_job(conn, job.job_id)
        # Claimed by an executor that has no row: it stopped beating long ago.
        assert transitions.claim_book(conn, job.job_id, ME, dead_before=utcnow())
    with job_table.begin() as conn:
        mine = live.executor.claim()
        assert transitions.claim_book(
            conn, job.job_id, mine, dead_before=live.executor.dead_before()
        )
    other = context(job_table, synthesizer).executor
    with job_table.begin() as conn:
        # Now held by a live executor: nobody else takes it.
        assert not transitions.claim_book(
            conn, job.job_id, other.claim(), dead_before=other.dead_before()
        )
        transitions.release_book(conn, job.job_id, mine)

    assert settle_stage(live, job.job_id) is State.DONE
    assert (tmp_path / "book" / "tones.m4b").is_file()


def test_a_chapter_without_a_wav_is_decoded_from_what_it_has(
    job_table: Engine, synthesizer: ToneSynthesizer, tmp_path: Path
) -> None:
    plan = book_plan(tmp_path)
    # As a job planned without the copies would be: two chapters have an MP3 and nothing else.
    scripts = tuple(replace(s, output=replace(s.output, lossless_copy=False)) for s in plan.scripts)
    job = record(job_table, replace(plan, scripts=scripts))

    assert asyncio.run(run(context(job_table, synthesizer), job)) is State.DONE

    done = summary(job_table, job.job_id)
    assert done.book is not None and done.book.state is State.DONE
    for chapter, script in zip(done.book.chapters, done.scripts, strict=True):
        # The MP3's decoder hides the encoder's delay, so the lengths agree closely.
        assert abs(float(str(chapter["duration_seconds"])) - (script.audio_seconds or 0)) < 0.03
    assert (tmp_path / "book" / "01-opening.mp3").is_file()
