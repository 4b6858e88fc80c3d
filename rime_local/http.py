"""`POST /v1/rime-tts`: one utterance per request, audio streamed in the response body.

Order of checks: bearer token (401), JSON body and Accept (400), parameters and text (400),
admission (429 with Retry-After), injected 5xx; then the body streams as espeak produces audio.
Every error body is plain text, as at Rime.

Interpretations:
- `Accept` picks the format among Rime's media types (parameters such as `codecs=opus` are
  matched loosely: `audio/ogg` means Ogg Opus). A missing `Accept` or `*/*` gets MP3; any other
  unknown type is a 400 naming the accepted ones.
- `Accept: text/event-stream` (Mist v2 only, 400 otherwise) streams the same JSON events as
  `/ws3`, one per SSE message, the SSE event name equal to `type`:
  `event: chunk` / `data: {"type": "chunk", "data": "<base64 audio>", "contextId": null}` and a
  final `event: done` / `data: {"type": "done", "contextId": null}`. The audio inside is raw PCM
  unless the body asks for `"audioFormat": "mp3" | "mulaw" | "pcm"`.
- An injected cut sends part of the body, then closes the connection without finishing the
  chunked encoding, so clients see a truncated body rather than a clean end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Send

from rime_local.codecs import Encoding
from rime_local.delivery import Delivered, Encoded, deliver
from rime_local.faults import FaultPlan
from rime_local.params import ParamError, parse_params, parse_ws_format, validate_text
from rime_local.state import EngineState
from rime_local.synthesis import Utterance

log = logging.getLogger(__name__)

SSE = "text/event-stream"

ACCEPTED_TYPES: dict[str, Encoding] = {
    "audio/mp3": Encoding.MP3,
    "audio/mpeg": Encoding.MP3,
    "audio/wav": Encoding.WAV,
    "audio/x-wav": Encoding.WAV,
    "audio/wave": Encoding.WAV,
    "audio/pcm": Encoding.PCM,
    "audio/l16": Encoding.PCM,
    "audio/x-mulaw": Encoding.MULAW,
    "audio/mulaw": Encoding.MULAW,
    "audio/pcmu": Encoding.MULAW,
    "audio/basic": Encoding.MULAW,
    "audio/ogg": Encoding.OGG_OPUS,
    "audio/webm": Encoding.WEBM_OPUS,
}
_DEFAULT_TYPES = {"", "*/*", "audio/*"}


def negotiate(accept: str | None) -> Encoding | str:
    """The output format for an Accept header, `SSE` for event streams; ParamError otherwise."""
    ranges = [part.split(";")[0].strip().lower() for part in (accept or "").split(",")]
    for media in ranges:
        if media == SSE:
            return SSE
        if media in ACCEPTED_TYPES:
            return ACCEPTED_TYPES[media]
    if any(media in _DEFAULT_TYPES for media in ranges):
        return Encoding.MP3
    known = "audio/mp3, audio/wav, audio/pcm, audio/x-mulaw, audio/ogg;codecs=opus, "
    raise ParamError(
        f"unsupported Accept {accept!r}; use one of {known}" + "audio/webm;codecs=opus"
    )


def plain(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A plain-text error response, Rime style."""
    return PlainTextResponse(message, status_code=status, headers=headers)


class AudioStreamResponse(StreamingResponse):
    """A streamed body that can be cut or stalled on purpose and always frees its slot."""

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        media_type: str,
        fault: FaultPlan,
        on_close: Any,
        on_audio_started: Any,
    ) -> None:
        super().__init__(chunks, media_type=media_type)
        self._chunks = chunks
        self._fault = fault
        self._on_close = on_close
        self._on_audio_started = on_audio_started

    async def stream_response(self, send: Send) -> None:
        """Send headers, then the body; a cut returns without the final empty body message."""
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            sent = 0
            fault = self._fault
            async with aclosing(self._chunks) as chunks:
                async for data in chunks:
                    if fault.cut_after is not None and sent + len(data) >= fault.cut_after:
                        head = data[: fault.cut_after - sent]
                        if head:
                            await send(
                                {"type": "http.response.body", "body": head, "more_body": True}
                            )
                            if not sent:
                                self._on_audio_started()
                        return
                    if fault.stall_after is not None and sent <= fault.stall_after < sent + len(
                        data
                    ):
                        split = fault.stall_after - sent
                        await send(
                            {"type": "http.response.body", "body": data[:split], "more_body": True}
                        )
                        if not sent and split:
                            self._on_audio_started()
                        sent += split
                        await asyncio.sleep(fault.stall_seconds)
                        data = data[split:]
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    if not sent and data:
                        self._on_audio_started()
                    sent += len(data)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._on_close()


async def _audio_bytes(
    state: EngineState, utterance: Utterance, fmt: Encoding, text: str, fault: FaultPlan
) -> AsyncGenerator[bytes, None]:
    started = time.monotonic()
    padding = fault.padding_seconds(len(text))
    async for event in deliver(utterance, fmt, lambda: state.config, padding):
        if isinstance(event, Encoded):
            yield event.data
        elif isinstance(event, Delivered):
            state.metrics.finished(len(text), event.audio_seconds, time.monotonic() - started)


async def _sse_bytes(
    state: EngineState, utterance: Utterance, fmt: Encoding, text: str, fault: FaultPlan
) -> AsyncGenerator[bytes, None]:
    async for data in _audio_bytes(state, utterance, fmt, text, fault):
        event = {"type": "chunk", "data": base64.b64encode(data).decode(), "contextId": None}
        yield f"event: chunk\ndata: {json.dumps(event)}\n\n".encode()
    done = {"type": "done", "contextId": None}
    yield f"event: done\ndata: {json.dumps(done)}\n\n".encode()


async def rime_tts(request: Request) -> Response:
    """The HTTP streaming endpoint."""
    state: EngineState = request.app.state.engine
    state.metrics.requests += 1
    key = state.authorize(request.headers.get("authorization"))
    if key is None:
        state.metrics.rejected_401 += 1
        return plain(401, state.refusal(request.headers.get("authorization")))
    try:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ParamError("the body must be JSON") from None
        if not isinstance(body, dict):
            raise ParamError("the body must be a JSON object")
        target = negotiate(request.headers.get("accept"))
        params = parse_params(body)
        text = validate_text(body.get("text"), params.model)
        if target == SSE:
            if not params.model.supports_sse:
                raise ParamError(
                    f"text/event-stream is only available for mistv2, not {params.model.id}"
                )
            fmt = parse_ws_format(body.get("audioFormat"))
        else:
            assert isinstance(target, Encoding)
            fmt = target
    except ParamError as exc:
        state.metrics.rejected_400 += 1
        return plain(400, str(exc))
    state.metrics.asked_for(params.model.id, params.speaker.name)

    rejection = state.admit(key)
    if rejection is not None:
        return plain(
            rejection.status, rejection.message, {"Retry-After": str(rejection.retry_after)}
        )
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            state.release(key)

    fault = state.draw_fault()
    if fault.error_status is not None:
        release()
        reason = "Service unavailable" if fault.error_status == 503 else "Internal server error"
        return plain(fault.error_status, f"{reason} (injected by the local engine)")
    utterance = Utterance(text, params.voicing, state.espeak)
    if target == SSE:
        chunks = _sse_bytes(state, utterance, fmt, text, fault)
        media_type = SSE
    else:
        chunks = _audio_bytes(state, utterance, fmt, text, fault)
        media_type = fmt.media_type
    return AudioStreamResponse(
        chunks, media_type, fault, release, lambda: state.metrics.began_audio(len(text))
    )
