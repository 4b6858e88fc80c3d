"""Operations: `/health` (no auth: the process answers), `/ready` (the job table, the broker
and the storage root answer) and `/metrics` (Prometheus text)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from pipeline import __version__
from pipeline.errors import first_line
from service.api.common import off_loop, state_of
from service.auth import Caller, reader
from service.metrics import CONTENT_TYPE
from service.models import Health, Ready
from service.state import ServiceState

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, summary="The process answers (no token needed)")
async def health(request: Request) -> Health:
    """Alive; which executor runs the jobs."""
    return Health(status="ok", version=__version__, executor=state_of(request).runner.kind)


def _database(state: ServiceState) -> str | None:
    try:
        with state.db.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        from sqlalchemy.engine import make_url

        where = make_url(state.settings.database_url).render_as_string(hide_password=True)
        return (
            f"cannot reach the job table at {where}: {first_line(exc, state.settings.database_url)}"
        )
    return None


def _storage(state: ServiceState) -> str | None:
    from pipeline.storage import open_store

    try:
        open_store(str(state.root)).check()
    except Exception as exc:
        return f"the root folder cannot be written: {first_line(exc)}"
    return None


@router.get(
    "/ready",
    response_model=Ready,
    summary="The job table, broker and storage answer",
    responses={503: {"model": Ready}},
)
async def ready(request: Request, _caller: Annotated[Caller, Depends(reader)]) -> Response:
    """200 when every part answers, 503 naming the ones that do not."""
    state = state_of(request)
    found = Ready(
        ready=False,
        database=await off_loop(_database, state),
        broker=await off_loop(state.runner.problem),
        storage=await off_loop(_storage, state),
    )
    found.ready = found.database is None and found.broker is None and found.storage is None
    return JSONResponse(found.model_dump(), status_code=200 if found.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}},
)
async def metrics(request: Request, _caller: Annotated[Caller, Depends(reader)]) -> Response:
    """Jobs by state, segments, retries, characters billed, queue depth, request latency."""
    body = await off_loop(state_of(request).metrics.text)
    return Response(body, media_type=CONTENT_TYPE)
