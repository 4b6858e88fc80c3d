"""A production's releases: list them, publish one, roll back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from pipeline.publish import Published, find_production, publish_release
from pipeline.store import productions
from service.api.common import Limit, Offset, off_loop, page, state_of
from service.auth import Caller, reader, writer
from service.models import PublishedOut, PublishIn, ReleaseOut, ReleasePage, RollbackIn

router = APIRouter(prefix="/v1/productions", tags=["releases"])

Destination = Annotated[
    str | None, Query(description="The production's destination, when the name has several")
]


def _out(done: Published) -> PublishedOut:
    return PublishedOut(
        production=done.production,
        destination=done.destination,
        release=done.job_id,
        previous=done.previous,
        outputs=done.outputs,
        removed=done.removed,
        pruned=list(done.pruned),
    )


@router.get("/{name}/releases", response_model=ReleasePage, summary="A production's releases")
async def list_releases(
    request: Request,
    name: str,
    _caller: Annotated[Caller, Depends(reader)],
    destination: Destination = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> ReleasePage:
    """Newest first: when, voices, scripts, characters billed, which one is published."""
    state = state_of(request)

    def read() -> ReleasePage:
        with state.db.begin() as conn:
            production = productions.get_production(conn, find_production(conn, name, destination))
            rows = productions.releases(conn, production.id)[offset : offset + limit + 1]
        items, next_offset = page(rows, limit, offset)
        return ReleasePage(
            production=production.name,
            destination=production.destination,
            items=[ReleaseOut.of(r) for r in items],
            next_offset=next_offset,
        )

    return await off_loop(read)


@router.post("/{name}/publish", response_model=PublishedOut, summary="Publish a release")
async def publish(
    request: Request, name: str, chosen: PublishIn, _caller: Annotated[Caller, Depends(writer)]
) -> PublishedOut:
    """The stable paths and results.json switch to a done release at once."""
    state = state_of(request)
    done = await off_loop(
        lambda: publish_release(state.db, name, chosen.release, chosen.destination, rollback=False)
    )
    return _out(done)


@router.post("/{name}/rollback", response_model=PublishedOut, summary="Publish an earlier release")
async def rollback(
    request: Request, name: str, chosen: RollbackIn, _caller: Annotated[Caller, Depends(writer)]
) -> PublishedOut:
    """Publish an older release again (default: the one published before the current)."""
    state = state_of(request)
    done = await off_loop(
        lambda: publish_release(state.db, name, chosen.release, chosen.destination, rollback=True)
    )
    return _out(done)
