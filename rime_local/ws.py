"""Rime's WebSocket endpoints: `/ws` (bare text in, raw audio out), `/ws2` and `/ws3` (JSON).

One `SocketSession` per connection runs at most one step at a time (a synthesis, or a batch's
timestamps and done); its `batching.Batcher` holds the buffer, the context id in force and the
queue, and decides what comes next. The `segment` modes follow seed 004:
- `never`: only `flush` and `eos` synthesize; a flush while busy queues that buffer, which is
  synthesized as soon as the current synthesis finishes. Text sent afterwards needs its own flush.
- `bySentence` (default, also empty/null): when idle, everything up to the last sentence end
  (see `sentences`) is synthesized; while busy, text keeps accumulating and the check runs again
  when the synthesis finishes.
- `immediate` (or `immediate=true`): when idle, the buffer is synthesized on receipt; while busy
  it accumulates and is synthesized as one utterance when the current synthesis finishes.
`/ws` has no `segment`: it behaves like `bySentence` with `,` also ending a phrase.

What `done` means. Clients (voice-agent frameworks among them) read `done` as "everything I
sent before this point has been spoken": they end the utterance there, or stop reading. So
`done` follows a batch only when the buffer and the queue hold nothing more for it: all text
received before a flush or eos, or under `bySentence` and `immediate` all text that was
synthesizable, has gone out as audio. The engine may synthesize a batch in several pieces (the
first sentence alone, because it arrived while idle); no `done` falls between them. The seeds'
wording: "After the last audio chunk for a synthesis batch has been sent, the server emits a
done event. This signals that the current synthesis is fully complete. If the client sends more
text and triggers further synthesis, another done will follow" (seed 001): a done per batch,
and a further one only for text that triggers a further synthesis, not for text already
waiting. Seed 004 has text that arrives while a synthesis runs queued and spoken with no
further word from the client: under `immediate`, "once the current synthesis finishes, Rime
flushes the entire accumulated buffer as a single utterance", so that text, and likewise under
`bySentence` sentences that became due meanwhile, is part of what the client is waiting for: it
continues the running batch, and the done comes after it. A flush is the client's own end of an
utterance ("Once flushed, Rime synthesizes the entire accumulated buffer as a single
utterance"), so it ends its batch; under `never` a flush that arrives while busy is one more
utterance, which Rime "will hold ... and synthesize ... as soon as the current synthesis
finishes": one done per non-empty flush, however many wait. The exact rules, context ids
included, are in `batching`.

Word timestamps: one `timestamps` event per batch, after the batch's last chunk and before its
`done`, times in seconds from the start of that batch's audio (seed 001: "measured from the
beginning of the audio for the current synthesis"); a batch made of several pieces has its
pieces' times shifted by the audio before them and merged. Readers differ: one adds to each
event the last end time of the events before it in the same utterance, another adds nothing.
With exactly one event per batch the first adds zero, so both read the same, right times.
Several events per batch, each from the start of its own piece, would be right for the first
reader only (and then off by the silence after each piece's last word); several measured from
the batch start, for the second only. Across utterances on one connection, times start again
at zero with each batch: the first reader's running total starts again with each new utterance
(its context ends at the done, and the next text opens a new one), the second never adds, so
both stay right; times running on across batches would put every later utterance's words past
the end of its audio for both.

Interpretations where the seeds are silent:
- A text message without `contextId` sets the context to null ("the most recent context id at
  the time audio was requested"). A synthesis takes the context in force when it starts, or, for
  a queued flush, when the flush arrived. A batch never mixes context ids.
- A flush of an empty buffer synthesizes nothing and sends nothing (it only ends the batch that
  is running, so text sent after it starts a new one).
- Per-message options: a text message may carry `inlineSpeedAlpha` and
  `phonemizeBetweenBrackets`, which apply to that message's text only (over the connection's
  query parameters); other keys of a message are ignored. Messages with different options can
  end up in one batch, even in one piece: the text is planned span by span (see `script`), so
  each message's markup is read with its own options while the sentence, its prosody and the
  batch's single `done` are unaffected. A bad value is an `error` event and the message's text
  is not buffered.
- `clear` drops the buffer and the queue and stops the synthesis in flight; the running batch
  sends no `timestamps` and no `done`.
- `eos` flushes the buffer; after the last batch the server closes with 1000. If no `done`
  was sent after the `eos` arrived (nothing to synthesize), a bare `done` is sent first. Messages
  after `eos` are ignored. On `/ws`, `<EOS>` closes the same way with no `done` (no JSON there).
- Commands on `/ws` are whole messages (`<CLEAR>`, `<FLUSH>`, `<EOS>`, surrounding whitespace
  ignored). Binary frames on `/ws` are read as UTF-8 text; on `/ws2` and `/ws3` they get an
  `error` event, as do invalid JSON, unknown operations and non-string `text` or `contextId`.
- Every `error` event carries a `contextId`, as the documents show on every other event: the id
  the refused message itself names, if it names one as a string, else the one in force when it
  arrived; a synthesis that fails reports in its batch's context.
- `audioFormat` defaults to `pcm`. MP3 syntheses are bare MP3 frames, so the chunks of several
  syntheses concatenate into one playable stream (each piece's encoder adds its own few
  milliseconds of padding, which the timestamps of later pieces do not count).
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
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketState

from rime_local.batching import Batcher, BatchTimes, Finish, Hangup, Piece, SegmentMode, Speak, Step
from rime_local.codecs import Encoding
from rime_local.delivery import Delivered, Encoded, deliver
from rime_local.faults import FaultPlan
from rime_local.params import (
    ParamError,
    RequestParams,
    message_markup,
    parse_params,
    parse_ws_format,
)
from rime_local.script import Span
from rime_local.state import EngineState
from rime_local.synthesis import Utterance, Words

log = logging.getLogger(__name__)


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


class SessionClosed(Exception):
    """The session ended (eos done, injected cut, or the client left)."""


class SocketSession:
    """One WebSocket connection: its `Batcher`, and the one step (synthesis or done) running."""

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
        self.endpoint = endpoint
        self.fault = fault
        self.batcher = Batcher(segment)
        self.times = BatchTimes()
        self.current: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._audio_bytes_sent = 0

    # Incoming messages.

    def on_text(self, span: Span, context_id: str | None) -> None:
        """Buffer text; synthesis may start, depending on the segment mode."""
        self.batcher.text(span, context_id)
        self._pump()

    def on_flush(self) -> None:
        """End the batch with the whole buffer."""
        self.batcher.flush()
        self._pump()

    def on_clear(self) -> None:
        """Drop the buffer, the queue and the running batch, and stop the synthesis in flight."""
        self.batcher.clear()
        self.times = BatchTimes()
        task, self.current = self.current, None
        if task is not None:
            task.cancel()
        self._pump()

    def on_eos(self) -> None:
        """Flush, then close once everything is spoken."""
        self.batcher.eos()
        self._pump()

    # Scheduling.

    def _pump(self) -> None:
        """Start the next step if nothing runs and one is due."""
        if self.current is not None or self.finished.is_set():
            return
        step = self.batcher.next_step()
        if step is not None:
            self.current = asyncio.create_task(self._run(step))

    async def _run(self, step: Step) -> None:
        try:
            if isinstance(step, Speak):
                await self._speak(step.piece)
            elif isinstance(step, Finish):
                await self._finish(step.context_id)
            else:
                await self._hang_up(step)
                return
        except SessionClosed:
            return
        except Exception:
            context_id = step.piece.context_id if isinstance(step, Speak) else step.context_id
            log.exception("synthesis failed on %s", self.endpoint.value)
            with contextlib.suppress(SessionClosed):
                await self.send_error("synthesis failed", context_id)
        self.current = None
        self._pump()

    async def _speak(self, piece: Piece) -> None:
        characters = len(piece.text)
        utterance = Utterance.of_spans(piece.spans, self.params.voicing, self.state.espeak)
        started = time.monotonic()
        padding = self.fault.padding_seconds(characters)
        audio_started = False
        async for event in deliver(utterance, self.fmt, lambda: self.state.config, padding):
            if isinstance(event, Encoded):
                await self._send_audio(event.data, piece.context_id)
                if not audio_started:
                    audio_started = True
                    self.state.metrics.began_audio(characters)
            elif isinstance(event, Words):
                self.times.add_words(event)
            elif isinstance(event, Delivered):
                self.times.add_audio(event.audio_seconds)
                seconds = time.monotonic() - started
                self.state.metrics.finished(characters, event.audio_seconds, seconds)

    async def _finish(self, context_id: str | None) -> None:
        words, self.times = self.times.event(), BatchTimes()
        if self.endpoint is WsEndpoint.BINARY:
            return
        if words is not None:
            await self._send_json(
                {
                    "type": "timestamps",
                    "word_timestamps": {
                        "words": list(words.words),
                        "start": list(words.start),
                        "end": list(words.end),
                    },
                    "contextId": context_id,
                }
            )
        await self._send_done(context_id)

    async def _hang_up(self, step: Hangup) -> None:
        if step.done_first and self.endpoint is not WsEndpoint.BINARY:
            await self._send_done(step.context_id)
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
        event: dict[str, Any] = {"type": "done", "contextId": context_id}
        if self.endpoint is WsEndpoint.JSON_V2:
            event = {"type": "done", "done": True, "contextId": context_id}
        await self._send_json(event)

    async def send_error(self, message: str, context_id: str | None) -> None:
        """An error event tagged with `context_id`; the connection stays open."""
        if self.endpoint is not WsEndpoint.BINARY:
            await self._send_json({"type": "error", "message": message, "contextId": context_id})

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


@dataclass(frozen=True)
class Refusal:
    """A malformed message: the error event's text and the context id it is tagged with."""

    message: str
    context_id: str | None


def _json_message(session: SocketSession, raw: str) -> Refusal | None:
    """Apply one /ws2 or /ws3 message; a Refusal for malformed input."""
    in_force = session.batcher.context_id
    try:
        message = json.loads(raw)
    except json.JSONDecodeError:
        return Refusal("malformed message: not valid JSON", in_force)
    if not isinstance(message, dict):
        return Refusal("malformed message: expected a JSON object", in_force)
    context_id = message.get("contextId")
    # A refused message that names its context is answered in it: that is the id the client
    # is listening for (and one that drops events of contexts it no longer holds would lose
    # an error tagged with the previous one).
    refused_in = context_id if isinstance(context_id, str) else in_force
    if "operation" in message:
        operation = message["operation"]
        if operation == "flush":
            session.on_flush()
        elif operation == "clear":
            session.on_clear()
        elif operation == "eos":
            session.on_eos()
        else:
            detail = f"unknown operation {operation!r}; expected flush, clear or eos"
            return Refusal(detail, refused_in)
        return None
    if "text" not in message:
        return Refusal("malformed message: expected 'text' or 'operation'", refused_in)
    text = message["text"]
    if not isinstance(text, str):
        return Refusal("malformed message: 'text' must be a string", refused_in)
    if context_id is not None and not isinstance(context_id, str):
        return Refusal("malformed message: 'contextId' must be a string or null", in_force)
    try:
        options = message_markup(message, session.params.voicing.markup)
    except ParamError as exc:
        return Refusal(f"malformed message: {exc}", refused_in)
    alone = message.get("inlineSpeedAlpha") not in (None, "")
    session.on_text(Span(text, options, alone), context_id)
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
        session.on_text(Span(raw, session.params.voicing.markup), None)


async def _read(session: SocketSession) -> None:
    ws = session.ws
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        if session.batcher.ended:
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
            refusal: Refusal | None = Refusal(
                "malformed message: expected JSON text, got a binary frame",
                session.batcher.context_id,
            )
        else:
            refusal = _json_message(session, text)
        if refusal is not None:
            try:
                await session.send_error(refusal.message, refusal.context_id)
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
