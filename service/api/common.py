"""What the resource modules share: the service's state, pagination, the thread hop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import Query, Request
from starlette.concurrency import run_in_threadpool

from service.errors import ApiError
from service.state import ServiceState

T = TypeVar("T")

MAX_PAGE = 200

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Items per page")]
Offset = Annotated[int, Query(ge=0, description="Items to skip")]


def state_of(request: Request) -> ServiceState:
    """The service's parts."""
    state: ServiceState = request.app.state.service
    return state


async def off_loop(call: Callable[..., T], *args: object) -> T:
    """`call(*args)` in a worker thread: the job table's driver blocks."""
    return await run_in_threadpool(call, *args)


def page(items: list[T], limit: int, offset: int) -> tuple[list[T], int | None]:
    """The first `limit` of `items` (fetched with one more), and the next page's offset."""
    more = len(items) > limit
    return items[:limit], (offset + limit if more else None)


def resolve_output(state: ServiceState, output: str | None) -> str | None:
    """A client's `output`: s3:// as given, a folder relative to the service's root."""
    if output is None or output.strip().lower().startswith("s3://"):
        return output
    return str(state.root / output)


def check_destination(state: ServiceState, destination: str) -> None:
    """Refuse a local destination outside the root: a client writes only where it may."""
    if destination.startswith("s3://") or Path(destination).is_relative_to(state.root):
        return
    raise ApiError(
        422,
        "destination_refused",
        "output: a local destination must be a folder inside the service's root folder "
        "(RIME_BATCH_SERVICE_ROOT), or s3://bucket/prefix",
        "output",
    )
