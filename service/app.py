"""The application: `create_app(settings)` builds it, `rime-batch serve` runs it with uvicorn.

FastAPI rather than bare Starlette: the OpenAPI schema at /v1/openapi.json is written from the
same pydantic models that validate the JSON bodies and query parameters, and the auth
dependencies are declared per route, so the tests can read which routes need what from the app
itself. Its own validation errors and 404/405s are answered in the service's error shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline import __version__
from pipeline.errors import RimeBatchError
from pipeline.settings import Settings
from pipeline.stages import Event
from service import console, ops, pages
from service.api import jobs, releases, schedules
from service.auth import Caller, reader
from service.errors import ApiError, from_library
from service.metrics import Metrics
from service.runner import Runner, runner_for
from service.sessions import Signer
from service.state import ServiceState

log = logging.getLogger("rime_batch.service")

# Routes anyone may call: the liveness probe, and the login form (it takes the token).
PUBLIC_PATHS = frozenset({"/health", "/login"})


def _field(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def create_app(
    settings: Settings,
    db: Engine | None = None,
    *,
    runner: Runner | None = None,
) -> FastAPI:
    """The service over the job table of `settings` (or `db`), running jobs with `runner`
    (default: the workers when a broker is configured, else the embedded executor)."""
    from pipeline.reach import open_job_table

    engine = db if db is not None else open_job_table(settings.database_url)
    secret = settings.session_secret
    signer = Signer(secret.get_secret_value().encode()) if secret is not None else Signer.random()
    metrics = Metrics(engine)
    root = Path(settings.service_root or Path.cwd()).resolve()

    def on_event(event: Event) -> None:
        metrics.on_event(event)
        if event.kind == "script":
            log.info(
                "script %s job=%s script=%s",
                event.outcome,
                event.job_id,
                event.script_id,
                extra={"job": event.job_id, "script": event.script_id},
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        chosen = runner if runner is not None else runner_for(engine, settings, on_event)
        app.state.service = ServiceState(engine, settings, signer, chosen, metrics, root)
        log.info("serving jobs of the %s executor; manifests read under %s", chosen.kind, root)
        try:
            yield
        finally:
            chosen.close()
            if db is None:
                engine.dispose()

    app = FastAPI(
        title="rime-batch",
        version=__version__,
        summary="Batch text-to-speech renders with Rime: jobs, releases, schedules.",
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # A path that matches no route is a 404, not a redirect to a near one.
        redirect_slashes=False,
    )
    app.include_router(ops.router)
    app.include_router(jobs.router)
    app.include_router(releases.router)
    app.include_router(schedules.router)
    app.include_router(console.router)
    app.include_router(pages.router)
    _schema_needs_auth(app)
    _handlers(app)
    _timing(app, metrics)
    return app


def routes_of(app: FastAPI) -> list[APIRoute]:
    """Every API route the app serves, those of its included routers too."""
    found: list[APIRoute] = []
    stack: list[object] = list(reversed(app.routes))
    while stack:
        route = stack.pop()
        if isinstance(route, APIRoute):
            found.append(route)
            continue
        # FastAPI keeps an included router as one entry that serves the router's routes.
        inner = getattr(route, "original_router", None)
        if inner is not None:
            stack.extend(reversed(inner.routes))
    return found


def _schema_needs_auth(app: FastAPI) -> None:
    # FastAPI serves its schema route without dependencies: put it behind a token like the rest.
    app.router.routes = [
        r for r in app.router.routes if getattr(r, "path", None) != app.openapi_url
    ]

    async def schema(_caller: Annotated[Caller, Depends(reader)]) -> Response:
        return JSONResponse(app.openapi())

    app.add_api_route("/v1/openapi.json", schema, include_in_schema=False, methods=["GET"])


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return exc.response(headers)

    @app.exception_handler(RimeBatchError)
    async def library_error(_request: Request, exc: RimeBatchError) -> Response:
        error = from_library(exc)
        if error.status >= 500:
            log.warning("%s", exc)
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _field(tuple(first.get("loc", ())))
        return ApiError(422, "invalid_request", f"{field}: {first['msg']}", field).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return ApiError(exc.status_code, code, str(exc.detail)).response()

    @app.exception_handler(console.LoginRequired)
    async def to_login(_request: Request, _exc: console.LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # A bug: its traceback goes to the log, never to the client.
        log.exception("%s %s failed", request.method, request.url.path)
        return ApiError(500, "internal", "the server failed; its log says why").response()


def _timing(app: FastAPI, metrics: Metrics) -> None:
    @app.middleware("http")
    async def timed(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            seconds = time.perf_counter() - started
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.latency.labels(request.method, template, str(status)).observe(seconds)
            params = request.scope.get("path_params", {})
            ids = "".join(
                f" {key}={params[name]}"
                for name, key in (("job_id", "job"), ("script_id", "script"))
                if name in params
            )
            caller = getattr(request.state, "caller", None)
            who = f" token={caller.token.name}" if caller is not None else ""
            log.info(
                "%s %s %d %.1fms%s%s",
                request.method,
                template,
                status,
                seconds * 1000,
                who,
                ids,
                extra={"job": params.get("job_id"), "script": params.get("script_id")},
            )
