"""Rime's WebSocket endpoints: `/ws` (bare text in, raw audio out), `/ws2` and `/ws3` (JSON).

One `SocketSession` per connection holds the text buffer, the most recent context id, a queue of
flushed buffers and at most one synthesis in flight. The `segment` modes follow seed 004:
- `never`: only `flush` and `eos` synthesize; a flush while busy queues that buffer, which is
  synthesized as soon as the current synthesis finishes. Text sent afterwards needs its own flush.
- `bySentence` (default, also empty/null): when idle, everything up to the last sentence end
  (see `sentences`) is synthesized; while busy, text keeps accumulating and the check runs again
  when the synthesis finishes.
- `immediate` (or `immediate=true`): when idle, the buffer is synthesized on receipt; while busy
  it accumulates and is synthesized as one utterance when the current synthesis finishes.
`/ws` has no `segment`: it behaves like `bySentence` with `,` also ending a phrase.

Interpretations where the seeds are silent:
- A text message without `contextId` sets the context to null ("the most recent context id at
  the time audio was requested"). A synthesis takes the context in force when it starts, or, for
  a queued flush, when the flush arrived.
- Each synthesis sends its chunks, then one `timestamps` event per sentence (times from the start
  of that synthesis), then `done`. A flush of an empty buffer synthesizes nothing and sends nothing.
- `clear` drops the buffer and the queue and stops the synthesis in flight; the stopped synthesis
  sends no `done`.
- `eos` flushes the buffer; after the last synthesis the server closes with 1000. If no `done`
  was sent after the `eos` arrived (nothing to synthesize), a bare `done` is sent first. Messages
  after `eos` are ignored. On `/ws`, `<EOS>` closes the same way with no `done` (no JSON there).
- Commands on `/ws` are whole messages (`<CLEAR>`, `<FLUSH>`, `<EOS>`, surrounding whitespace
  ignored). Binary frames on `/ws` are read as UTF-8 text; on `/ws2` and `/ws3` they get an
  `error` event, as do invalid JSON, unknown operations and non-string `text` or `contextId`.
- `audioFormat` defaults to `pcm`. MP3 syntheses are bare MP3 frames, so the chunks of several
  syntheses concatenate into one playable stream.
- Bad query parameters (400), a bad or missing key (401), limits (429, with Retry-After) and
  injected 5xx all fail the upgrade with that HTTP status and a plain-text body. A connection
  holds one generation slot while open. An injected cut closes the connection with 1011 partway
  through the audio.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketState

from rime_local.codecs import Encoding
from rime_local.delivery import Delivered, Encoded, deliver
from rime_local.faults import FaultPlan
from rime_local.params import (
    ParamError,
    RequestParams,
    parse_params,
    parse_ws_format,
)
from rime_local.sentences import PHRASE_MARKS, SENTENCE_MARKS, last_boundary
from rime_local.state import EngineState
from rime_local.synthesis import Utterance, Words

log = logging.getLogger(__name__)


class SegmentMode(StrEnum):
    """A session's `segment` mode: when buffered text is synthesized."""

    NEVER = "never"  # only on flush / eos
    BY_SENTENCE = "bySentence"  # at sentence ends, when idle
    IMMEDIATE = "immediate"  # on receipt, when idle
    BY_PHRASE = "byPhrase"  # /ws: at . , ? ! when idle


class WsEndpoint(StrEnum):
    """Which WebSocket endpoint a session serves, and so its wire format."""

    BINARY = "ws"
    JSON_V2 = "ws2"
    JSON_V3 = "ws3"


def parse_segment(query: dict[str, str]) -> SegmentMode:
    """`segment` (with `immediate=true` as an alias); null or empty means bySentence."""
    if query.get("immediate", "").strip().lower() in {"true", "1"}:
        return SegmentMode.IMMEDIATE
    value = query.get("segment", "")
    if value in ("", "null", "None", "bySentence"):
        return SegmentMode.BY_SENTENCE
    if value == "never":
        return SegmentMode.NEVER
    if value == "immediate":
        return SegmentMode.IMMEDIATE
    raise ParamError("segment must be one of never, bySentence, immediate")


@dataclass(frozen=True)
class SynthesisBatch:
    """Text to speak as one utterance (a batch that ends in `done`) and its context id."""

    text: str
    context_id: str | None


class SessionClosed(Exception):
    """The session ended (eos done, injected cut, or the client left)."""


class SocketSession:
    """The buffer, queue and synthesis of one WebSocket connection."""

    def __init__(
        self,
        websocket: WebSocket,
        state: EngineState,
        params: RequestParams,
        fmt: Encoding,
        segment: SegmentMode,
        endpoint: WsEndpoint,
        fault: FaultPlan,
    ) -> None:
        self.ws = websocket
        self.state = state
        self.params = params
        self.fmt = fmt
        self.segment = segment
        self.endpoint = endpoint
        self.fault = fault
        self.buffer = ""
        self.context_id: str | None = None
        self.pending: deque[SynthesisBatch] = deque()
        self.current: asyncio.Task[None] | None = None
        self.eos = False
        self.done_since_eos = False
        self.finished = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._audio_bytes_sent = 0

    # Incoming messages.

    def on_text(self, text: str, context_id: str | None) -> None:
        """Buffer text; synthesis may start, depending on the segment mode."""
        self.buffer += text
        self.context_id = context_id
        self._pump()

    def on_flush(self) -> None:
        """Queue the whole buffer for synthesis."""
        if self.buffer.strip():
            self.pending.append(SynthesisBatch(self.buffer, self.context_id))
        self.buffer = ""
        self._pump()

    def on_clear(self) -> None:
        """Drop the buffer and the queue, and stop the synthesis in flight."""
        self.buffer = ""
        self.pending.clear()
        task, self.current = self.current, None
        if task is not None:
            task.cancel()
        self._pump()

    def on_eos(self) -> None:
        """Flush, then close once everything is spoken."""
        self.eos = True
        self.on_flush()

    # Scheduling.

    def _pump(self) -> None:
        """Start the next synthesis if idle and something is due."""
        if self.current is not None or self.finished.is_set():
            return
        batch = self._next_batch()
        if batch is not None:
            self.current = asyncio.create_task(self._run(batch))
        elif self.eos:
            self.current = asyncio.create_task(self._close_after_eos())

    def _next_batch(self) -> SynthesisBatch | None:
        if self.pending:
            return self.pending.popleft()
        if self.eos or not self.buffer.strip():
            return None
        cut: int | None = None
        if self.segment is SegmentMode.BY_SENTENCE:
            cut = last_boundary(self.buffer, SENTENCE_MARKS)
        elif self.segment is SegmentMode.BY_PHRASE:
            cut = last_boundary(self.buffer, PHRASE_MARKS)
        elif self.segment is SegmentMode.IMMEDIATE:
            cut = len(self.buffer)
        if cut is None:
            return None
        text, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return SynthesisBatch(text, self.context_id)

    async def _run(self, batch: SynthesisBatch) -> None:
        try:
            await self._synthesize(batch)
        except SessionClosed:
            return
        except Exception:
            log.exception("synthesis failed on %s", self.endpoint.value)
            await self.send_error("synthesis failed")
        self.current = None
        self._pump()

    async def _synthesize(self, batch: SynthesisBatch) -> None:
        utterance = Utterance(batch.text, self.params.voicing, self.state.espeak)
        started = time.monotonic()
        padding = self.fault.padding_seconds(len(batch.text))
        audio_started = False
        async for event in deliver(utterance, self.fmt, lambda: self.state.config, padding):
            if isinstance(event, Encoded):
                await self._send_audio(event.data, batch.context_id)
                if not audio_started:
                    audio_started = True
                    self.state.metrics.began_audio(len(batch.text))
            elif isinstance(event, Words) and self.endpoint is not WsEndpoint.BINARY:
                await self._send_json(
                    {
                        "type": "timestamps",
                        "word_timestamps": {
                            "words": list(event.words),
                            "start": list(event.start),
                            "end": list(event.end),
                        },
                        "contextId": batch.context_id,
                    }
                )
            elif isinstance(event, Delivered):
                seconds = time.monotonic() - started
                self.state.metrics.finished(len(batch.text), event.audio_seconds, seconds)
        await self._send_done(batch.context_id)

    async def _close_after_eos(self) -> None:
        if not self.done_since_eos:
            await self._send_done(self.context_id)
        await self.close(1000)

    # Outgoing messages.

    async def _send_audio(self, data: bytes, context_id: str | None) -> None:
        fault = self.fault
        if fault.cut_after is not None and self._audio_bytes_sent + len(data) >= fault.cut_after:
            await self.close(1011, "injected fault")
            raise SessionClosed
        if (
            fault.stall_after is not None
            and self._audio_bytes_sent <= fault.stall_after < self._audio_bytes_sent + len(data)
        ):
            await asyncio.sleep(fault.stall_seconds)
        self._audio_bytes_sent += len(data)
        if self.endpoint is WsEndpoint.BINARY:
            await self._send(self.ws.send_bytes(data))
        else:
            encoded = base64.b64encode(data).decode()
            await self._send_json({"type": "chunk", "data": encoded, "contextId": context_id})

    async def _send_done(self, context_id: str | None) -> None:
        if self.eos:
            self.done_since_eos = True
        if self.endpoint is WsEndpoint.BINARY:
            return
        event: dict[str, Any] = {"type": "done", "contextId": context_id}
        if self.endpoint is WsEndpoint.JSON_V2:
            event = {"type": "done", "done": True, "contextId": context_id}
        await self._send_json(event)

    async def send_error(self, message: str) -> None:
        """An error event; the connection stays open."""
        if self.endpoint is not WsEndpoint.BINARY:
            await self._send_json({"type": "error", "message": message})

    async def _send_json(self, event: dict[str, Any]) -> None:
        await self._send(self.ws.send_text(json.dumps(event)))

    async def _send(self, sending: Awaitable[None]) -> None:
        async with self._send_lock:
            if self.finished.is_set():
                if asyncio.iscoroutine(sending):
                    sending.close()  # never awaited: the connection is closing
                raise SessionClosed
            try:
                await sending
            except Exception as exc:  # the client went away mid-send
                self.finished.set()
                raise SessionClosed from exc

    async def close(self, code: int, reason: str = "") -> None:
        """Close the connection once."""
        if self.finished.is_set():
            return
        self.finished.set()
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason or None)

    async def stop(self) -> None:
        """Cancel whatever is running (the connection is gone)."""
        self.finished.set()
        task, self.current = self.current, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# Reading messages.


def _json_message(session: SocketSession, raw: str) -> str | None:
    """Apply one /ws2 or /ws3 message; returns an error message for malformed input."""
    try:
        message = json.loads(raw)
    except json.JSONDecodeError:
        return "malformed message: not valid JSON"
    if not isinstance(message, dict):
        return "malformed message: expected a JSON object"
    if "operation" in message:
        operation = message["operation"]
        if operation == "flush":
            session.on_flush()
        elif operation == "clear":
            session.on_clear()
        elif operation == "eos":
            session.on_eos()
        else:
            return f"unknown operation {operation!r}; expected flush, clear or eos"
        return None
    if "text" not in message:
        return "malformed message: expected 'text' or 'operation'"
    text = message["text"]
    context_id = message.get("contextId")
    if not isinstance(text, str):
        return "malformed message: 'text' must be a string"
    if context_id is not None and not isinstance(context_id, str):
        return "malformed message: 'contextId' must be a string or null"
    session.on_text(text, context_id)
    return None


def _binary_message(session: SocketSession, raw: str) -> None:
    command = raw.strip()
    if command == "<CLEAR>":
        session.on_clear()
    elif command == "<FLUSH>":
        session.on_flush()
    elif command == "<EOS>":
        session.on_eos()
    else:
        session.on_text(raw, None)


async def _read(session: SocketSession) -> None:
    ws = session.ws
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        if session.eos:
            continue
        text = message.get("text")
        data = message.get("bytes")
        if session.endpoint is WsEndpoint.BINARY:
            if text is None and data is not None:
                text = data.decode("utf-8", errors="replace")
            if text is not None:
                _binary_message(session, text)
            continue
        if text is None:
            error: str | None = "malformed message: expected JSON text, got a binary frame"
        else:
            error = _json_message(session, text)
        if error is not None:
            try:
                await session.send_error(error)
            except SessionClosed:
                return


# Endpoints.


async def _deny(websocket: WebSocket, status: int, message: str, **headers: str) -> None:
    await websocket.send_denial_response(
        PlainTextResponse(message, status_code=status, headers=headers or None)
    )


async def _serve(websocket: WebSocket, endpoint: WsEndpoint) -> None:
    state: EngineState = websocket.app.state.engine
    state.metrics.requests += 1
    key = state.authorize(websocket.headers.get("authorization"))
    if key is None:
        state.metrics.rejected_401 += 1
        await _deny(websocket, 401, state.refusal(websocket.headers.get("authorization")))
        return
    query = dict(websocket.query_params)
    try:
        if endpoint is WsEndpoint.JSON_V2:
            params = parse_params(
                query, default_model="mistv2", allowed_models=frozenset({"mist", "mistv2"})
            )
        else:
            params = parse_params(query)
        fmt = parse_ws_format(query.get("audioFormat"))
        segment = SegmentMode.BY_PHRASE if endpoint is WsEndpoint.BINARY else parse_segment(query)
    except ParamError as exc:
        state.metrics.rejected_400 += 1
        await _deny(websocket, 400, str(exc))
        return
    state.metrics.asked_for(params.model.id, params.speaker.name)
    rejection = state.admit(key)
    if rejection is not None:
        retry = str(rejection.retry_after)
        await _deny(websocket, rejection.status, rejection.message, **{"Retry-After": retry})
        return
    try:
        fault = state.draw_fault()
        if fault.error_status is not None:
            await _deny(
                websocket, fault.error_status, "Server error (injected by the local engine)"
            )
            return
        await websocket.accept()
        session = SocketSession(websocket, state, params, fmt, segment, endpoint, fault)
        reader = asyncio.create_task(_read(session))
        finished = asyncio.create_task(session.finished.wait())
        try:
            await asyncio.wait({reader, finished}, return_when=asyncio.FIRST_COMPLETED)
            if finished.done() and not reader.done():
                # The server closed; let the client's close frame arrive, briefly.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), timeout=2)
        finally:
            for task in (reader, finished):
                task.cancel()
            await asyncio.gather(reader, finished, return_exceptions=True)
            await session.stop()
            if websocket.application_state is WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await websocket.close(1000)
    finally:
        state.release(key)


async def ws_binary(websocket: WebSocket) -> None:
    """`/ws`: bare text and commands in, raw audio bytes out."""
    await _serve(websocket, WsEndpoint.BINARY)


async def ws_json_v2(websocket: WebSocket) -> None:
    """`/ws2`: Mist v2 JSON events (done carries `done: true`)."""
    await _serve(websocket, WsEndpoint.JSON_V2)


async def ws_json_v3(websocket: WebSocket) -> None:
    """`/ws3`: JSON events for every model."""
    await _serve(websocket, WsEndpoint.JSON_V3)
