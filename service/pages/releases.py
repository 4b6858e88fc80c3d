"""A production's releases: which is published, publish another, roll back."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response

from pipeline.errors import RimeBatchError
from pipeline.publish import find_production, publish_release
from pipeline.store import productions
from service.api.common import off_loop, state_of
from service.auth import Caller
from service.errors import ApiError
from service.pages.jobs import Console, Writer, message
from service.pages.render import back_to, html_page

router = APIRouter()


def _url(name: str, destination: str | None) -> str:
    tail = f"&destination={quote(destination)}" if destination else ""
    return f"/releases?name={quote(name)}{tail}"


async def _render(
    request: Request,
    caller: Caller,
    name: str,
    destination: str | None,
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    state = state_of(request)

    def read() -> tuple[productions.Production, list[productions.Release]]:
        with state.db.begin() as conn:
            production = productions.get_production(conn, find_production(conn, name, destination))
            return production, productions.releases(conn, production.id)

    production, releases = await off_loop(read)
    shown = production.destination
    root = str(state.root)
    if shown.startswith(root):
        shown = "<root>" + shown[len(root) :]
    return html_page(
        request,
        "releases.html",
        caller,
        status=status,
        error=error,
        title=f"Releases of {production.name}",
        production=production,
        shown_destination=shown,
        releases=releases,
        can_roll_back=sum(1 for r in releases if r.published_at is not None) > 1,
    )


@router.get("/releases")
async def releases_page(
    request: Request,
    caller: Console,
    name: Annotated[str, Query()],
    destination: Annotated[str | None, Query()] = None,
) -> Response:
    """Newest first: state, voices, scripts, characters billed, which one is published."""
    return await _render(request, caller, name, destination)


async def _publish(
    request: Request,
    caller: Caller,
    name: str,
    destination: str,
    release: str | None,
    *,
    rollback: bool,
) -> Response:
    state = state_of(request)
    try:
        await off_loop(
            lambda: publish_release(state.db, name, release, destination or None, rollback=rollback)
        )
    except (RimeBatchError, ApiError) as exc:
        return await _render(
            request, caller, name, destination or None, error=message(exc), status=409
        )
    return back_to(_url(name, destination or None), "rolled-back" if rollback else "published")


@router.post("/releases/publish")
async def publish(
    request: Request,
    caller: Writer,
    name: Annotated[str, Form()] = "",
    destination: Annotated[str, Form()] = "",
    release: Annotated[str, Form()] = "",
) -> Response:
    """Publish the chosen release of the production."""
    return await _publish(request, caller, name, destination, release, rollback=False)


@router.post("/releases/rollback")
async def rollback(
    request: Request,
    caller: Writer,
    name: Annotated[str, Form()] = "",
    destination: Annotated[str, Form()] = "",
) -> Response:
    """Publish again the release published before the current one."""
    return await _publish(request, caller, name, destination, None, rollback=True)
