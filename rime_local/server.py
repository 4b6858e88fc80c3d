"""Serving the engine with uvicorn: in a background thread (tests, demo, benchmarks) or in the
foreground (`python -m rime_local`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, TypeVar

import uvicorn

from rime_local.app import build_app
from rime_local.config import EngineConfig, EngineSettings
from rime_local.state import EngineState

T = TypeVar("T")

# Injected body cuts leave a response unfinished on purpose, and uvicorn's sans-I/O WebSocket
# protocol does not mark a denied upgrade (401/400/429 sent as HTTP) as handled. uvicorn reports
# each as an error, which would drown real problems in a fault-heavy run.
_EXPECTED_ERRORS = frozenset(
    {
        "ASGI callable returned without completing response.",
        "ASGI callable returned without completing handshake.",
    }
)


class _DropInjectedCuts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in _EXPECTED_ERRORS


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropInjectedCuts) for f in logger.filters):
        logger.addFilter(_DropInjectedCuts())


def _bind(config: EngineConfig) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(config: EngineConfig, state: EngineState, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        build_app(config, state),
        log_level=log_level,
        ws="websockets-sansio",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=2,
    )


class RunningEngine:
    """An engine serving in a background thread; `stop()` shuts it down."""

    def __init__(
        self,
        state: EngineState,
        server: uvicorn.Server,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        port: int,
        host: str,
    ) -> None:
        self.state = state
        self.host = host
        self.port = port
        self._server = server
        self._loop = loop
        self._thread = thread

    @property
    def base_url(self) -> str:
        """http://host:port"""
        return f"http://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        """The full URL of the HTTP streaming endpoint."""
        return f"{self.base_url}/v1/rime-tts"

    @property
    def ws_url(self) -> str:
        """ws://host:port (append /ws, /ws2 or /ws3)."""
        return f"ws://{self.host}:{self.port}"

    @property
    def config(self) -> EngineConfig:
        """The knobs in force."""
        return self.state.config

    def _call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def configure(self, **knobs: Any) -> EngineConfig:
        """Change knobs now (on the engine's loop, so requests never see half a change)."""
        return self._call(lambda: self.state.configure(**knobs))

    def metrics(self) -> dict[str, Any]:
        """The counters, as `GET /metrics` returns them."""
        return self._call(self.state.metrics.snapshot)

    def reset_metrics(self) -> None:
        """Zero the counters."""
        self._call(self.state.metrics.reset)

    def stop(self) -> None:
        """Shut down and wait for the thread (idempotent)."""
        self._server.should_exit = True
        self._thread.join(timeout=15)

    def __enter__(self) -> RunningEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(
    config: EngineConfig | None = None, log_level: str = "warning"
) -> RunningEngine:
    """Start an engine on a background thread; returns once it accepts connections."""
    config = config or EngineConfig()
    _install_log_filter()
    sock = _bind(config)
    host, port = sock.getsockname()[:2]
    state = EngineState(config)
    server = uvicorn.Server(_uvicorn_config(config, state, log_level))
    loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as exc:  # reported to the starting thread
            failure.append(exc)
        finally:
            sock.close()
            loop.close()

    thread = threading.Thread(target=serve, name=f"rime-engine-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if failure or not thread.is_alive():
            cause = failure[0] if failure else None
            raise RuntimeError("the local engine failed to start") from cause
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the local engine did not start within 15 seconds")
        time.sleep(0.01)
    return RunningEngine(state, server, loop, thread, port, host)


def run(config: EngineConfig, log_level: str = "info") -> None:
    """Serve in the foreground until interrupted."""
    _install_log_filter()
    sock = _bind(config)
    host, port = sock.getsockname()[:2]
    state = EngineState(config)
    print(f"Rime-compatible engine on http://{host}:{port}/v1/rime-tts and ws://{host}:{port}/ws3")
    server = uvicorn.Server(_uvicorn_config(config, state, log_level))
    asyncio.run(server.serve(sockets=[sock]))


def parse_args(argv: Sequence[str] | None = None) -> EngineConfig:
    """Flags (one per knob, e.g. --concurrency-per-key 5) over `RIME_ENGINE_*` over defaults."""
    parser = argparse.ArgumentParser(prog="python -m rime_local", description=__doc__)
    defaults = EngineConfig()
    for f in fields(EngineConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = str if f.name in {"host", "api_keys"} else type(getattr(defaults, f.name))
        parser.add_argument(
            flag, dest=f.name, type=kind, default=None, help=f"(env RIME_ENGINE_{f.name.upper()})"
        )
    args = parser.parse_args(argv)
    return EngineSettings().to_config(**vars(args))


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry: run the engine in the foreground."""
    run(parse_args(argv))
