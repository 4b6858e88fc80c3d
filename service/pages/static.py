"""The console's script, served from the package (no build step)."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from service.auth import Caller
from service.console import console_caller

router = APIRouter()


@lru_cache(maxsize=1)
def _script() -> bytes:
    return files("service").joinpath("static/console.js").read_bytes()


@router.get("/static/console.js")
async def console_js(_caller: Annotated[Caller, Depends(console_caller)]) -> Response:
    """The live-progress script."""
    return Response(
        _script(),
        media_type="text/javascript",
        headers={"Cache-Control": "private, max-age=300"},
    )
