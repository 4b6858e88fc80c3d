"""What a reviewer does to a job from its page: edit one script's text or voice and re-render
just it (the API's own `rerender`), publish the release, cancel, resume. Each is a form post
with the session's CSRF token, refused to a read-only session by `writer`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from pipeline.errors import RimeBatchError
from pipeline.manifest.paths import normalize_text
from pipeline.store import views
from service.api.common import off_loop, state_of
from service.api.jobs import rerender
from service.auth import Caller
from service.errors import ApiError, not_found
from service.models import RerenderIn, ScriptEdit
from service.pages.job import render_job
from service.pages.jobs import Console, Writer, message
from service.pages.render import back_to, html_page
from service.state import ServiceState

router = APIRouter()


def _script(state: ServiceState, job_id: str, script_id: str) -> tuple[str, str, str]:
    """The job's name, and the script's text and speaker as this job rendered them."""
    from pipeline.store import load_plan

    with state.db.begin() as conn:
        summary = views.job_summary(conn, job_id)
        plan = load_plan(conn, job_id)
    for script in plan.scripts:
        if script.script_id == script_id:
            # Every segment's source joined is the script's text (markup included).
            text = "".join(seg.source for seg in script.segments)
            return summary.job.name, text, script.params.speaker
    raise not_found(f"job {job_id} has no script {script_id!r}")


def _edit_page(
    request: Request,
    caller: Caller,
    job_id: str,
    script_id: str,
    name: str,
    text: str,
    speaker: str,
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    return html_page(
        request,
        "edit.html",
        caller,
        status=status,
        title=f"Re-render {script_id}",
        job_id=job_id,
        script_id=script_id,
        path=quote(script_id),
        name=name,
        text=text,
        speaker=speaker,
        error=error,
    )


@router.get("/jobs/{job_id}/edit/{script_id:path}")
async def edit_page(request: Request, job_id: str, script_id: str, caller: Console) -> Response:
    """The script's text and voice in a form (read-only sessions see them without one)."""
    name, text, speaker = await off_loop(_script, state_of(request), job_id, script_id)
    return _edit_page(request, caller, job_id, script_id, name, text, speaker)


@router.post("/jobs/{job_id}/edit/{script_id:path}")
async def rerender_script(
    request: Request,
    job_id: str,
    script_id: str,
    caller: Writer,
    text: Annotated[str, Form()] = "",
    speaker: Annotated[str, Form()] = "",
) -> Response:
    """A new release with this script as edited and the rest from this job, published only
    once approved; its page compares each new take with this job's."""
    state = state_of(request)
    name, old_text, old_speaker = await off_loop(_script, state, job_id, script_id)
    edit = ScriptEdit(
        script=script_id,
        # The form shows the text as the job has it; unchanged, it stays as the manifest has it.
        text=text if normalize_text(text) != old_text else None,
        speaker=speaker.strip() or None,
    )
    change = RerenderIn(scripts=[script_id], edits=[edit], publish="manual")
    try:
        new_id = await off_loop(rerender, state, job_id, change)
    except (RimeBatchError, ApiError) as exc:
        return _edit_page(
            request,
            caller,
            job_id,
            script_id,
            name,
            text or old_text,
            speaker or old_speaker,
            error=message(exc),
            status=422,
        )
    return back_to(f"/jobs/{new_id}?against={job_id}")


@router.post("/jobs/{job_id}/publish")
async def publish(request: Request, job_id: str, caller: Writer) -> Response:
    """Publish this job's release (its production's stable paths switch to it)."""
    from pipeline.publish import publish_release

    state = state_of(request)

    def run() -> None:
        with state.db.begin() as conn:
            job = views.job_summary(conn, job_id).job
        publish_release(state.db, job.name, job_id, job.destination, rollback=False)

    return await _act(request, job_id, caller, run, "published")


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str, caller: Writer) -> Response:
    """Cancel the job, as the API's cancel does."""
    from workers.commands import cancel as cancel_job

    state = state_of(request)

    def run() -> None:
        with state.db.begin() as conn:
            views.job_summary(conn, job_id)
        cancel_job(job_id, database_url=state.settings.database_url)

    return await _act(request, job_id, caller, run, "cancelled")


@router.post("/jobs/{job_id}/resume")
async def resume(request: Request, job_id: str, caller: Writer) -> Response:
    """Resume the job, as the API's resume does."""
    state = state_of(request)

    def run() -> None:
        with state.db.begin() as conn:
            views.job_summary(conn, job_id)
        state.runner.resume(job_id)

    return await _act(request, job_id, caller, run, "resumed")


async def _act(
    request: Request, job_id: str, caller: Caller, run: Callable[[], None], notice: str
) -> Response:
    """Do `run`; the job's page next, with what refused it if something did."""
    try:
        await off_loop(run)
    except (RimeBatchError, ApiError) as exc:
        if isinstance(exc, ApiError) and exc.status == 404:
            raise
        return await render_job(request, job_id, caller, None, error=message(exc), status=409)
    return back_to(f"/jobs/{job_id}", notice)
