"""Placeholder; replaced by the WebSocket endpoints."""

from __future__ import annotations

from starlette.websockets import WebSocket


async def ws_binary(websocket: WebSocket) -> None:
    """Not yet served."""
    await websocket.close(1011)


ws_json_v2 = ws_binary
ws_json_v3 = ws_binary
