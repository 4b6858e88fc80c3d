"""The results file of a job, `results.json` at its destination: what every output is.

A reader (a phone system's sync, a publishing step) follows it to the outputs: per script its
files with their checksums and sizes, its duration, and what it cost.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from pipeline.store.views import JobSummary

RESULTS_KEY = "results.json"


def results_document(summary: JobSummary) -> dict[str, object]:
    """The job's results file: per script its outputs, duration, checksum and billing."""
    job = summary.job
    return {
        "job_id": job.job_id,
        "name": job.name,
        "state": job.state.value,
        "manifest": job.manifest,
        "destination": job.destination,
        "chars": job.chars,
        "billed_chars": job.billed_chars,
        "audio_seconds": round(job.audio_seconds, 3),
        "scripts": [
            {
                "id": s.script_id,
                "state": s.state.value,
                "outputs": [asdict(o) for o in s.outputs],
                "audio_seconds": None if s.audio_seconds is None else round(s.audio_seconds, 3),
                "chars": s.chars,
                "billed_chars": s.billed_chars,
                "attempts": s.attempts,
                "error": s.error,
            }
            for s in summary.scripts
        ],
    }


def results_bytes(summary: JobSummary) -> bytes:
    """The results file's contents."""
    return json.dumps(results_document(summary), indent=2).encode()
