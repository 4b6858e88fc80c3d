"""The results file of a release: what every output is.

Each job writes one into its release folder (`releases/<job id>/results.json`) when it ends;
publishing a release writes it at the destination's root too, with each output's stable path
(see `pipeline.publish`). A reader (a phone system's sync) follows it to the outputs: per script
its files with their checksums, sizes and, when normalized, what each measures; its duration,
and what it cost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict

from pipeline.store.schema import BookFile, OutputFile
from pipeline.store.views import BookStatus, JobSummary


def seconds(value: float) -> float:
    """A duration as every report gives it (results files, events, status): to the millisecond,
    so a figure shown shorter is rounded from the same number everywhere."""
    return round(value, 3)


def results_document(
    summary: JobSummary,
    published_uri: Callable[[str, str], str] | None = None,
    *,
    published_key_uri: Callable[[str], str] | None = None,
) -> dict[str, object]:
    """The job's results file: per script its outputs, duration, checksum and billing, and the
    job's book when it has one.

    With `published_uri(script_id, format)`, the root file of a published release: it names the
    release, and each output also gives its stable path (a book's file: `published_key_uri`
    of its key).
    """
    job = summary.job

    def output(script_id: str, file: OutputFile) -> dict[str, object]:
        listed: dict[str, object] = asdict(file)
        if published_uri is not None:
            listed["published_uri"] = published_uri(script_id, file.format)
        return listed

    return {
        "release": job.job_id,
        "job_id": job.job_id,
        "name": job.name,
        "state": job.state.value,
        "manifest": job.manifest,
        "destination": job.destination,
        "chars": job.chars,
        "billed_chars": job.billed_chars,
        "audio_seconds": seconds(job.audio_seconds),
        "scripts": [
            {
                "id": s.script_id,
                "state": s.state.value,
                "outputs": [output(s.script_id, o) for o in s.outputs],
                "audio_seconds": None if s.audio_seconds is None else seconds(s.audio_seconds),
                "chars": s.chars,
                "billed_chars": s.billed_chars,
                "attempts": s.attempts,
                "error": s.error,
                # The leveling, and the figures of the output furthest from the target (each
                # output lists its own); None when off.
                "loudness": None if s.loudness is None else asdict(s.loudness),
                "warnings": list(s.warnings),
            }
            for s in summary.scripts
        ],
        **({} if summary.book is None else {"book": _book(summary.book, published_key_uri)}),
    }


def _book(book: BookStatus, published_key_uri: Callable[[str], str] | None) -> dict[str, object]:
    """A book's entry: its state, each file (the M4B, the chapters' MP3s, the playlist) and each
    chapter's place in the M4B."""

    def listed(file: BookFile) -> dict[str, object]:
        entry: dict[str, object] = asdict(file)
        if published_key_uri is not None:
            entry["published_uri"] = published_key_uri(file.key)
        return entry

    return {
        "title": book.title,
        "state": book.state.value,
        "outputs": [listed(f) for f in book.outputs],
        "chapters": list(book.chapters),
        "error": book.error,
    }


def results_bytes(
    summary: JobSummary,
    published_uri: Callable[[str, str], str] | None = None,
    *,
    published_key_uri: Callable[[str], str] | None = None,
) -> bytes:
    """The results file's contents (see `results_document`)."""
    document = results_document(summary, published_uri, published_key_uri=published_key_uri)
    return json.dumps(document, indent=2).encode()
