"""Schedules: list, create, get, delete. A schedule's manifest is an s3:// URI, or a file in the
service's root folder named relative to it (read again at every run, as `schedule add`'s is)."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from pipeline.manifest.source import is_s3
from pipeline.plan import job_options
from pipeline.scheduler import add
from pipeline.store.schedules import get_schedule, last_runs, list_schedules, remove_schedule
from service.api.common import check_destination, off_loop, resolve_output, state_of
from service.auth import Caller, reader, writer
from service.errors import ApiError
from service.models import ScheduleIn, ScheduleOut, SchedulePage
from service.state import ServiceState

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])


def _inside(state: ServiceState, relative: str) -> Path:
    """The manifest file `relative` names under the root; never a path outside it."""
    root = state.root
    if Path(relative).is_absolute():
        raise ApiError(422, "invalid_input", "manifest: a path relative to the root", "manifest")
    path = Path(os.path.normpath(root / relative))
    if not path.is_relative_to(root) or not path.resolve().is_relative_to(root.resolve()):
        raise ApiError(422, "invalid_input", "manifest: it points outside the root", "manifest")
    return path


def _shown(state: ServiceState, manifest: str) -> str:
    if is_s3(manifest):
        return manifest
    path = Path(manifest)
    return str(path.relative_to(state.root)) if path.is_relative_to(state.root) else path.name


@router.get("", response_model=SchedulePage, summary="Every schedule")
async def schedules(request: Request, _caller: Annotated[Caller, Depends(reader)]) -> SchedulePage:
    """Each schedule, when it is next due (UTC) and its last run."""
    return await off_loop(read_schedules, state_of(request))


def read_schedules(state: ServiceState) -> SchedulePage:
    """Every schedule with its last run (the API's list and the console's page)."""
    with state.db.begin() as conn:
        rows, last = list_schedules(conn), last_runs(conn)
    return SchedulePage(
        items=[ScheduleOut.of(s, _shown(state, s.manifest), last.get(s.id)) for s in rows]
    )


@router.post("", status_code=201, response_model=ScheduleOut, summary="Create a schedule")
async def create_schedule(
    request: Request, new: ScheduleIn, _caller: Annotated[Caller, Depends(writer)]
) -> ScheduleOut:
    """The manifest is planned once now: one that cannot be rendered is refused (422)."""
    return await off_loop(add_schedule, state_of(request), new)


@router.put("/{name}", response_model=ScheduleOut, summary="Change a schedule")
async def change_schedule(
    request: Request, name: str, new: ScheduleIn, _caller: Annotated[Caller, Depends(writer)]
) -> ScheduleOut:
    """Replace what schedule `name` renders and when, checked as a new one is; its runs, and
    the due times it has handled, stay. The body's `name` must be the path's."""
    if new.name != name:
        raise ApiError(422, "invalid_input", "name: a schedule keeps its name", "name")
    return await off_loop(partial(add_schedule, replace=True), state_of(request), new)


def add_schedule(state: ServiceState, new: ScheduleIn, *, replace: bool = False) -> ScheduleOut:
    """Add the schedule `new` describes (or, with `replace`, change the one of its name),
    planned once now (the API's and the console's)."""
    options = job_options(new.set, new.voice_map, publish=new.publish, notify=new.notify)
    # A manifest in S3 is read again from its object at every due time; a file, from the root.
    manifest = new.manifest if is_s3(new.manifest) else _inside(state, new.manifest)
    schedule = add(
        state.db,
        new.name,
        manifest,
        new.cron,
        only_if_changed=new.only_if_changed,
        output=resolve_output(state, new.output),
        options=options,
        check=lambda plan: check_destination(state, plan.destination),
        replace=replace,
    )
    with state.db.begin() as conn:
        last = last_runs(conn).get(schedule.id)
    return ScheduleOut.of(schedule, _shown(state, schedule.manifest), last)


@router.get("/{name}", response_model=ScheduleOut, summary="One schedule")
async def one_schedule(
    request: Request, name: str, _caller: Annotated[Caller, Depends(reader)]
) -> ScheduleOut:
    """The schedule, when it is next due and its last run."""
    state = state_of(request)

    def read() -> ScheduleOut:
        with state.db.begin() as conn:
            schedule = get_schedule(conn, name)
            last = last_runs(conn).get(schedule.id)
        return ScheduleOut.of(schedule, _shown(state, schedule.manifest), last)

    return await off_loop(read)


@router.delete("/{name}", status_code=204, summary="Delete a schedule")
async def delete_schedule(
    request: Request, name: str, _caller: Annotated[Caller, Depends(writer)]
) -> Response:
    """Its runs go too; the jobs it submitted stay."""
    await off_loop(remove, state_of(request), name)
    return Response(status_code=204)


def remove(state: ServiceState, name: str) -> None:
    """Delete schedule `name` and its runs."""
    with state.db.begin() as conn:
        remove_schedule(conn, name)
