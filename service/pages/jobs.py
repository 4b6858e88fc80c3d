"""The console's jobs list (with live progress) and its new-job form."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, Response

from pipeline.errors import RimeBatchError
from pipeline.plan import job_options
from pipeline.store import State, views
from pipeline.store.views import JobStatus
from service.api.common import off_loop, state_of
from service.api.jobs import create_from_manifest, manifest_name
from service.auth import Caller, writer
from service.console import console_caller
from service.errors import ApiError, from_library
from service.pages.render import back_to, fragment, html_page
from service.state import ServiceState

router = APIRouter()

PAGE_SIZE = 20
_FINAL = {State.DONE, State.FAILED, State.CANCELLED}

Console = Annotated[Caller, Depends(console_caller)]
Writer = Annotated[Caller, Depends(writer)]


def is_live(job: JobStatus) -> bool:
    """Whether the job may still change: running, or done and about to publish itself."""
    if job.interrupted:
        return False
    if job.state not in _FINAL:
        return True
    auto = job.options.publish.value == "auto"
    return job.state is State.DONE and auto and not job.published and job.error is None


def dead_before(state: ServiceState) -> datetime:
    from pipeline.store import executors

    return executors.dead_before(state.settings.executor_timeout_seconds)


def _jobs(state: ServiceState, offset: int) -> tuple[list[JobStatus], int | None]:
    with state.db.begin() as conn:
        rows = views.list_jobs(
            conn, limit=PAGE_SIZE + 1, offset=offset, dead_before=dead_before(state)
        )
    more = len(rows) > PAGE_SIZE
    return rows[:PAGE_SIZE], (offset + PAGE_SIZE if more else None)


@router.get("/")
@router.get("/jobs")
async def jobs_page(request: Request, caller: Console, offset: int = Query(0, ge=0)) -> Response:
    """The newest jobs, their state and progress; the new-job form."""
    state = state_of(request)
    jobs, next_offset = await off_loop(_jobs, state, offset)
    return html_page(
        request,
        "jobs.html",
        caller,
        title="Jobs",
        jobs=jobs,
        offset=offset,
        limit=PAGE_SIZE,
        next_offset=next_offset,
        live=any(is_live(j) for j in jobs),
    )


@router.get("/jobs/rows")
async def job_rows(request: Request, _caller: Console, offset: int = Query(0, ge=0)) -> Response:
    """The jobs list's rows alone, for the page's polling (`X-Live: yes` while any may change)."""
    state = state_of(request)
    jobs, _next = await off_loop(_jobs, state, offset)
    live = any(is_live(j) for j in jobs)
    return HTMLResponse(
        fragment("job_rows.html", jobs=jobs, live=live),
        headers={"X-Live": "yes" if live else "no", "Cache-Control": "no-store"},
    )


@router.post("/jobs")
async def new_job(
    request: Request,
    caller: Writer,
    file: Annotated[UploadFile | None, File()] = None,
    text: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
) -> Response:
    """A job from an uploaded or pasted manifest, checked as `render` checks one; a problem is
    shown above the form, naming its file, line and field."""
    from pipeline.manifest.models import MAX_MANIFEST_BYTES

    state = state_of(request)
    uploaded = file is not None and bool(file.filename)
    # One byte past the limit is enough for the manifest's own "too big" message.
    body = await file.read(MAX_MANIFEST_BYTES + 1) if file is not None and uploaded else b""
    chosen = name.strip() or (file.filename if file is not None and uploaded else None)
    if not body:
        body = text.encode()
    try:
        if not body.strip():
            raise ApiError(422, "invalid_input", "choose a manifest file or paste one", "file")
        filename = manifest_name(chosen or "manifest.yaml", "")
        job_id = await off_loop(
            create_from_manifest, state, filename, body, None, job_options(None, None)
        )
    except (RimeBatchError, ApiError) as exc:
        return await _refused_job(request, caller, state, exc, text, chosen or "")
    return back_to(f"/jobs/{job_id}", "submitted")


async def _refused_job(
    request: Request,
    caller: Caller,
    state: ServiceState,
    exc: RimeBatchError | ApiError,
    text: str,
    name: str,
) -> Response:
    jobs, next_offset = await off_loop(_jobs, state, 0)
    return html_page(
        request,
        "jobs.html",
        caller,
        status=422,
        title="Jobs",
        error=message(exc),
        jobs=jobs,
        offset=0,
        limit=PAGE_SIZE,
        next_offset=next_offset,
        live=False,
        text=text,
        name=name,
    )


def message(exc: RimeBatchError | ApiError) -> str:
    """One line saying what was wrong, naming file, line and field as the API's 422 does."""
    error = from_library(exc) if isinstance(exc, RimeBatchError) else exc
    return error.message
