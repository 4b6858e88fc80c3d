"""The engine's ASGI app: Rime's endpoints plus health, metrics and runtime knobs.

Besides Rime's API:
- `GET /health` -> `ok`.
- `GET /metrics` -> JSON counts (requests, in flight, peak, 429s, faults by kind, characters,
  completed, mean request seconds, and `audio_started` / `billed_characters`: syntheses whose
  audio began to go out, cut or not, and their characters, what Rime would bill; `voices`:
  valid requests by `modelId/speaker`);
  `POST /metrics/reset` zeroes them.
- `GET /admin/config` -> the knobs (key count only); `POST /admin/config` with a JSON object of
  knobs changes them at once and returns the result. The engine binds loopback only, so these
  need no key.
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from rime_local.config import EngineConfig
from rime_local.http import rime_tts
from rime_local.state import EngineState
from rime_local.ws import ws_binary, ws_json_v2, ws_json_v3


async def health(request: Request) -> Response:
    """Liveness."""
    return PlainTextResponse("ok")


async def metrics(request: Request) -> Response:
    """Counters as JSON."""
    state: EngineState = request.app.state.engine
    return JSONResponse(state.metrics.snapshot())


async def reset_metrics(request: Request) -> Response:
    """Zero the counters."""
    state: EngineState = request.app.state.engine
    state.metrics.reset()
    return JSONResponse(state.metrics.snapshot())


async def admin_config(request: Request) -> Response:
    """Read or change the knobs."""
    state: EngineState = request.app.state.engine
    if request.method == "POST":
        try:
            changes = json.loads(await request.body())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of knobs")
            state.configure(**changes)
        except ValueError as exc:
            return PlainTextResponse(str(exc), status_code=400)
    return JSONResponse(state.config.public())


def build_app(config: EngineConfig, state: EngineState | None = None) -> Starlette:
    """A Starlette app serving the engine with `config` (or an existing state)."""
    app = Starlette(
        routes=[
            Route("/v1/rime-tts", rime_tts, methods=["POST"]),
            WebSocketRoute("/ws", ws_binary),
            WebSocketRoute("/ws2", ws_json_v2),
            WebSocketRoute("/ws3", ws_json_v3),
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/metrics/reset", reset_metrics, methods=["POST"]),
            Route("/admin/config", admin_config, methods=["GET", "POST"]),
        ]
    )
    app.state.engine = state or EngineState(config)
    return app
