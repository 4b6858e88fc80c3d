"""A job's page: its state and totals, and every script's state, attempts, characters,
duration, loudness, error and takes (players and peak strips), each beside the compared
release's take when the two differ (the published release, or `?against=`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from pipeline.errors import RimeBatchError
from pipeline.loudness import LoudnessRecord
from pipeline.storage import is_audio
from pipeline.store import State, views
from pipeline.store.schema import OutputFile
from pipeline.store.views import JobStatus, JobSummary, ScriptStatus
from service.api.common import off_loop, state_of
from service.auth import Caller
from service.errors import not_found
from service.models import output_url
from service.pages.jobs import Console, dead_before, is_live
from service.pages.render import html_page
from service.peaks import Analysis, strip_svg
from service.state import ServiceState

router = APIRouter()

# A job page analyses (peaks, loudness) this many outputs itself; past it, each strip is
# analysed when the browser asks for it, and the loudness shows once that has happened.
ANALYSED_ON_PAGE = 24
# Audio players load their metadata up front on pages up to this many outputs.
PRELOAD_OUTPUTS = 60


@dataclass(frozen=True)
class Take:
    """One output of a script as the page shows it."""

    label: str
    format: str
    url: str
    strip_url: str
    facts: str
    track_url: str | None  # this take's WebVTT captions, played with it


@dataclass(frozen=True)
class ScriptView:
    """One script's section of a job page."""

    status: ScriptStatus
    path: str  # the script id as a URL path
    voice: str
    takes: list[Take]
    same_as_against: bool
    captions: list[tuple[str, str]]  # (format, url) of this job's caption files
    loudness: str  # the figures measured when it was encoded, and any warning


def _facts(output: OutputFile, analysis: Analysis | None) -> str:
    """A take's figures: its loudness as recorded when it was encoded (else as analysed here),
    its peak, and any clipping the analysis found."""
    parts = []
    recorded = output.loudness
    lufs = recorded.integrated_lufs if recorded is not None else None
    if lufs is None and analysis is not None:
        lufs = analysis.integrated_lufs
    if lufs is not None:
        parts.append(f"{lufs:.1f} LUFS")
    if recorded is not None and recorded.true_peak_dbtp is not None:
        parts.append(f"true peak {recorded.true_peak_dbtp:.1f} dBTP")
    elif analysis is not None:
        peak = analysis.peak_dbfs
        parts.append("silent" if peak is None else f"peak {peak:.1f} dBFS")
    if analysis is not None and analysis.clipped_buckets:
        parts.append(f"clipping in {analysis.clipped_buckets} places")
    return ", ".join(parts)


def _loudness(record: LoudnessRecord | None) -> str:
    if record is None or record.integrated_lufs is None:
        return ""
    of = f" ({record.format}, the farthest from it)" if record.format else ""
    shown = f"{record.integrated_lufs:.1f} LUFS{of}, target {record.target_lufs:g}"
    if record.range_lu is not None:
        shown += f", range {record.range_lu:.1f} LU"
    if record.true_peak_dbtp is not None:
        shown += f", true peak {record.true_peak_dbtp:.1f} dBTP"
    return shown + (", limited" if record.limited else "")


# A take as shown: its label, the job it belongs to, the output and that job's destination.
Entry = tuple[str, str, OutputFile, str]


def _shown(
    job: JobStatus, script: ScriptStatus, before: ScriptStatus | None, other: JobSummary | None
) -> tuple[ScriptStatus, list[Entry], bool]:
    """A script's takes in the order shown: per format this job's, then the compared
    release's when they differ; and whether all of them are the same audio as that release's."""
    audio = [o for o in script.outputs if is_audio(o.format)]
    if other is None or before is None:
        return script, [("Take", job.job_id, o, job.destination) for o in audio], False
    theirs = {o.format: o for o in before.outputs if is_audio(o.format)}
    mine = {o.format: o.sha256 for o in audio}
    same = bool(mine) and mine == {f: o.sha256 for f, o in theirs.items()}
    entries: list[Entry] = []
    for o in audio:
        entries.append(("This take", job.job_id, o, job.destination))
        old = theirs.get(o.format)
        if old is not None and not same:
            label = f"Release {other.job.job_id}"
            entries.append((label, other.job.job_id, old, other.job.destination))
    return script, entries, same


def _track(
    owner: str,
    script_id: str,
    before: ScriptStatus | None,
    summary: JobSummary,
    other: JobSummary | None,
) -> str | None:
    """The WebVTT captions of the job a take belongs to, if that script has them."""
    mine = next((s for s in summary.scripts if s.script_id == script_id), None)
    script = mine if owner == summary.job.job_id else before if other is not None else None
    if script is None or not any(o.format == "vtt" for o in script.outputs):
        return None
    return output_url(owner, script_id, "vtt")


def strip_url(job_id: str, script_id: str, fmt: str) -> str:
    """Where the console serves an output's peak strip."""
    return f"/jobs/{job_id}/strip/{quote(fmt)}/{quote(script_id)}"


@dataclass(frozen=True)
class JobPage:
    """What a job page shows, read in one transaction."""

    summary: JobSummary
    voices: dict[str, str]
    against: JobSummary | None
    against_published: bool
    releases_url: str


def _read_job(state: ServiceState, job_id: str, against: str | None) -> JobPage:
    from pipeline.store import load_plan, productions

    with state.db.begin() as conn:
        summary = views.job_summary(conn, job_id, dead_before=dead_before(state))
        job = summary.job
        plan = load_plan(conn, job_id)
        voices = {s.script_id: f"{s.params.speaker} ({s.params.model_id})" for s in plan.scripts}
        production_id = productions.find(conn, job.name, job.destination)
        published = (
            productions.get_production(conn, production_id).published_job
            if production_id is not None
            else None
        )
        chosen = against or (published if published != job_id else None)
        other = None
        if chosen is not None:
            chosen = views.resolve_job_id(conn, chosen)
            other = views.job_summary(conn, chosen) if chosen != job_id else None
    releases_url = f"/releases?name={quote(job.name)}&destination={quote(job.destination)}"
    return JobPage(
        summary, voices, other, other is not None and other.job.job_id == published, releases_url
    )


@router.get("/jobs/{job_id}")
async def job_page(
    request: Request,
    job_id: str,
    caller: Console,
    against: Annotated[str | None, Query(description="A release to compare with")] = None,
) -> Response:
    """A job: its state, and every script's state, attempts, characters, duration, loudness,
    takes (this release's and, where different, the compared release's) and error."""
    return await render_job(request, job_id, caller, against)


async def render_job(
    request: Request,
    job_id: str,
    caller: Caller,
    against: str | None,
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    """The job page, with `error` above it when a form post was refused."""
    state = state_of(request)
    read = await off_loop(_read_job, state, job_id, against)
    summary = read.summary
    other = read.against
    old = {s.script_id: s for s in other.scripts} if other is not None else {}
    shown = [_shown(summary.job, s, old.get(s.script_id), other) for s in summary.scripts]
    wanted = [(o, dest) for _s, entries, _same in shown for _label, _job, o, dest in entries]
    cache = state.peaks

    def analyse() -> dict[str, Analysis]:
        found = {}
        for output, destination in wanted[:ANALYSED_ON_PAGE]:
            try:
                found[output.sha256] = cache.get(output.sha256, output.uri, destination)
            except (RimeBatchError, OSError, ValueError):
                continue  # its strip says it cannot be drawn; the page still shows
        return found

    analysed = await off_loop(analyse)
    views_ = [
        ScriptView(
            script,
            quote(script.script_id),
            read.voices.get(script.script_id, ""),
            [
                Take(
                    label,
                    o.format,
                    output_url(owner, script.script_id, o.format),
                    strip_url(owner, script.script_id, o.format),
                    _facts(o, analysed.get(o.sha256) or cache.peek(o.sha256)),
                    _track(owner, script.script_id, old.get(script.script_id), summary, other),
                )
                for label, owner, o, _dest in entries
            ],
            same,
            [
                (o.format, output_url(summary.job.job_id, script.script_id, o.format))
                for o in script.outputs
                if not is_audio(o.format)
            ],
            _loudness(script.loudness),
        )
        for script, entries, same in shown
    ]
    job = summary.job
    return html_page(
        request,
        "job.html",
        caller,
        status=status,
        error=error,
        title=f"Job {job.job_id}",
        job=job,
        scripts=views_,
        live=is_live(job),
        can_publish=job.state is State.DONE and not job.published,
        against=read.against.job.job_id if read.against is not None else None,
        against_published=read.against_published,
        releases_url=read.releases_url,
        preload="metadata" if len(wanted) <= PRELOAD_OUTPUTS else "none",
    )


@router.get("/jobs/{job_id}/strip/{fmt}/{script_id:path}")
async def strip(
    request: Request, job_id: str, fmt: str, script_id: str, _caller: Console
) -> Response:
    """An output's peak strip (SVG): a bar per stretch, clipped stretches in red."""
    state = state_of(request)

    def draw() -> str:
        with state.db.begin() as conn:
            summary = views.job_summary(conn, job_id)
        for script in summary.scripts:
            if script.script_id == script_id:
                for output in script.outputs:
                    if output.format == fmt:
                        found = state.peaks.get(output.sha256, output.uri, summary.job.destination)
                        return strip_svg(found)
        raise not_found(f"job {job_id} has no {fmt!r} output of {script_id!r}")

    svg = await off_loop(draw)
    return Response(
        svg, media_type="image/svg+xml", headers={"Cache-Control": "private, max-age=3600"}
    )
