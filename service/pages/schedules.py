"""Schedules: list, add and delete, through the API's own functions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError

from pipeline.errors import RimeBatchError
from service.api.common import off_loop, state_of
from service.api.schedules import add_schedule, read_schedules, remove
from service.auth import Caller
from service.errors import ApiError
from service.models import ScheduleIn
from service.pages.jobs import Console, Writer, message
from service.pages.render import back_to, html_page

router = APIRouter()


async def _render(
    request: Request,
    caller: Caller,
    *,
    error: str | None = None,
    status: int = 200,
    form: dict[str, str] | None = None,
) -> Response:
    listed = await off_loop(read_schedules, state_of(request))
    return html_page(
        request,
        "schedules.html",
        caller,
        status=status,
        error=error,
        title="Schedules",
        schedules=listed.items,
        form=form or {},
    )


@router.get("/schedules")
async def schedules_page(request: Request, caller: Console) -> Response:
    """Every schedule, when it is next due and its last run; the new-schedule form."""
    return await _render(request, caller)


@router.post("/schedules")
async def add(
    request: Request,
    caller: Writer,
    name: Annotated[str, Form()] = "",
    manifest: Annotated[str, Form()] = "",
    cron: Annotated[str, Form()] = "",
    publish: Annotated[str, Form()] = "auto",
    only_if_changed: Annotated[str, Form()] = "",
) -> Response:
    """A schedule of a manifest under the root; one that cannot be planned is refused."""
    form = {"name": name, "manifest": manifest, "cron": cron}
    try:
        new = ScheduleIn.model_validate(
            {**form, "publish": publish, "only_if_changed": bool(only_if_changed)}
        )
        await off_loop(add_schedule, state_of(request), new)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return await _render(
            request, caller, error=f"{where}: {first['msg']}", status=422, form=form
        )
    except (RimeBatchError, ApiError) as exc:
        return await _render(request, caller, error=message(exc), status=422, form=form)
    return back_to("/schedules", "schedule-added")


@router.post("/schedules/{name}/delete")
async def delete(request: Request, name: str, caller: Writer) -> Response:
    """Delete the schedule (its runs go too; the jobs it submitted stay)."""
    try:
        await off_loop(remove, state_of(request), name)
    except (RimeBatchError, ApiError) as exc:
        return await _render(request, caller, error=message(exc), status=404)
    return back_to("/schedules", "schedule-deleted")
