"""Rime's JSON WebSocket API (`/ws3`), on the `websockets` library.

The synthesis arguments are query parameters of the connection; the key goes in the upgrade
request's Authorization header. Received messages become typed events (`events`); `synthesize`
gathers one utterance from them by the rules of `utterance`, whether the server answers a flush
with one done or several. Failures become pipeline.rime.errors, and nothing is retried here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import CloseCode

from pipeline import __version__
from pipeline.rime import errors
from pipeline.rime.checks import check_audio, duration
from pipeline.rime.events import Chunk, ErrorEvent, Event, parse_event
from pipeline.rime.params import AudioFormat, Segmenting, TtsRequest, VoiceParams
from pipeline.rime.utterance import SETTLE_SECONDS, Assembly, Synthesis

log = logging.getLogger(__name__)

WS3_PATH = "/ws3"
# A chunk is base64 audio in JSON; long syntheses at high rates outgrow websockets' 1 MiB default.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_OPEN_TIMEOUT = 10.0
# Between two events of a running synthesis; a silent server past this is treated as stuck.
DEFAULT_RECEIVE_TIMEOUT = 60.0


class _RedactAuthorization(logging.Filter):
    """websockets logs every handshake header at DEBUG; this hides the Authorization value."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(
            isinstance(a, str) and a.startswith("Bearer ") for a in args
        ):
            record.args = tuple(
                "[redacted]" if isinstance(a, str) and a.startswith("Bearer ") else a for a in args
            )
        return True


# The library's own logger name would let its handshake lines through unfiltered.
_wire_log = logging.getLogger(f"{__name__}.wire")
_wire_log.addFilter(_RedactAuthorization())


def ws3_url(
    base: str,
    params: VoiceParams,
    audio_format: AudioFormat = AudioFormat.PCM,
    segment: Segmenting | None = Segmenting.NEVER,
) -> str:
    """The /ws3 connection URL: `base` (a host, or a full /ws3 URL) plus the query parameters."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/") or WS3_PATH
    query = urlencode(params.to_query(audio_format, segment))
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


class RimeWsClient:
    """An open /ws3 connection: send text and operations, iterate over typed events."""

    def __init__(
        self,
        connection: ClientConnection,
        params: VoiceParams,
        *,
        segment: Segmenting | None,
        secret: str | None,
        receive_timeout: float | None,
        audio_format: AudioFormat = AudioFormat.PCM,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self._connection = connection
        self.params = params
        self.segment = segment
        self.audio_format = audio_format
        self._secret = secret
        self._receive_timeout = receive_timeout
        self._settle_seconds = settle_seconds
        self._received_any = False

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        params: VoiceParams,
        api_key: str | SecretStr | None = None,
        *,
        audio_format: AudioFormat = AudioFormat.PCM,
        segment: Segmenting | None = Segmenting.NEVER,
        open_timeout: float = DEFAULT_OPEN_TIMEOUT,
        receive_timeout: float | None = DEFAULT_RECEIVE_TIMEOUT,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> AsyncIterator[RimeWsClient]:
        """Open a connection to `url` (a host, or a full /ws3 URL) and close it after.

        No `api_key` (or an empty one) sends no Authorization header, as for a local engine.

        `segment` defaults to `never`: audio only on flush or eos, which is what `synthesize`
        relies on. None leaves Rime's default (`bySentence`). `settle_seconds`: see `utterance`.
        """
        secret = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        target = ws3_url(url, params, audio_format, segment)
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        log.debug("connecting to %s", target)
        try:
            connection = await ws_connect(
                target,
                additional_headers=headers,
                user_agent_header=f"rime-batch/{__version__}",
                open_timeout=open_timeout,
                max_size=MAX_MESSAGE_BYTES,
                logger=_wire_log,
            )
        except InvalidStatus as exc:
            response = exc.response
            raise errors.error_for_status(
                response.status_code,
                (response.body or b"").decode("utf-8", errors="replace"),
                retry_after=response.headers.get("Retry-After"),
                secret=secret,
            ) from exc
        except InvalidURI as exc:
            raise errors.PermanentError(f"invalid WebSocket URL: {exc}") from exc
        except TimeoutError as exc:
            raise errors.ConnectError(f"timed out connecting to {url}") from exc
        except (OSError, InvalidHandshake) as exc:
            detail = errors.clean_message(str(exc) or type(exc).__name__, secret)
            raise errors.ConnectError(f"cannot connect to {url}: {detail}") from exc
        client = cls(
            connection,
            params,
            segment=segment,
            secret=secret,
            receive_timeout=receive_timeout,
            audio_format=audio_format,
            settle_seconds=settle_seconds,
        )
        try:
            yield client
        finally:
            await connection.close()

    def _closed_error(self, exc: ConnectionClosed) -> errors.RimeError:
        """Our error for a connection the server closed other than normally."""
        close = exc.rcvd
        if close is None:
            return errors.StreamCut("connection dropped without a close frame")
        reason = errors.clean_message(close.reason, self._secret)
        message = f"connection closed with code {close.code}" + (f": {reason}" if reason else "")
        if close.code == CloseCode.INTERNAL_ERROR:
            # Rime accepts a bad request's upgrade and then closes it with 1011; once events
            # have arrived, the same code means the server gave up partway through.
            if not self._received_any:
                return errors.BadRequest(message)
            return errors.StreamCut(message)
        if close.code == CloseCode.POLICY_VIOLATION:
            return errors.AuthError(message)
        if close.code == CloseCode.TRY_AGAIN_LATER:
            return errors.RateLimited(message, status=None)
        if close.code == CloseCode.ABNORMAL_CLOSURE:
            return errors.StreamCut(message)
        return errors.ServerError(message)

    async def send_json(self, message: Mapping[str, Any]) -> None:
        """Send any JSON message, e.g. an operation this client has no helper for."""
        try:
            await self._connection.send(json.dumps(message))
        except ConnectionClosedOK as exc:
            raise errors.ConnectError("connection already closed") from exc
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from exc

    async def send_text(
        self,
        text: str,
        context_id: str | None = None,
        inline_speed_alpha: str | None = None,
    ) -> None:
        """Add text to the server's buffer; later events are tagged with `context_id`.

        `inline_speed_alpha` is the speeds of this text's own `[word]`s, as Rime writes them
        (`TtsRequest.inline_speed_alpha_text`): a per-message option.
        """
        message: dict[str, Any] = {"text": text}
        if context_id is not None:
            message["contextId"] = context_id
        if inline_speed_alpha:
            message["inlineSpeedAlpha"] = inline_speed_alpha
        await self.send_json(message)

    async def flush(self) -> None:
        """Synthesize whatever is buffered now."""
        await self.send_json({"operation": "flush"})

    async def clear(self) -> None:
        """Drop the buffered text (an interruption)."""
        await self.send_json({"operation": "clear"})

    async def eos(self) -> None:
        """Synthesize what is buffered, then have the server close the connection."""
        await self.send_json({"operation": "eos"})

    async def recv(self) -> Event | None:
        """The next event; None once the server has closed the connection normally."""
        try:
            return await self._receive(self._receive_timeout)
        except TimeoutError as exc:
            raise errors.Timeout(
                f"no message from the server in {self._receive_timeout:g}s",
                billed=self._received_any,
            ) from exc

    async def _receive(self, timeout: float | None) -> Event | None:
        """The next event, or None once closed normally; TimeoutError after `timeout` s."""
        while True:
            try:
                async with asyncio.timeout(timeout):
                    raw = await self._connection.recv()
            except ConnectionClosedOK:
                return None
            except ConnectionClosed as exc:
                raise self._closed_error(exc) from exc
            self._received_any = True
            event = parse_event(raw, self._secret)
            if event is not None:
                return event
            log.debug("ignoring an unknown event type")

    async def __aiter__(self) -> AsyncIterator[Event]:
        """Events until the server closes the connection normally."""
        while (event := await self.recv()) is not None:
            yield event

    async def synthesize(
        self,
        text: str,
        context_id: str | None = None,
        *,
        inline_speed_alpha: str | None = None,
        on_audio: Callable[[], None] | None = None,
    ) -> Synthesis:
        """Send `text`, flush, and gather that utterance's audio and word times (see `utterance`).

        Events of other contexts that come before its first done are a previous utterance's
        leftovers and are skipped; so are error events tagged with another context. `on_audio`
        is called once, at the utterance's first audio chunk (from then on, Rime bills).
        """
        if self.segment is not Segmenting.NEVER:
            # Under the other settings the server may cut the text into several batches on
            # its own, and join text sent later to them.
            raise ValueError("synthesize() needs a connection opened with segment=never")
        if len(text) > self.params.max_chars:
            raise errors.InvalidRequest(
                f"text is {len(text)} characters; {self.params.model_id} takes at most "
                f"{self.params.max_chars}"
            )
        context_id = context_id or uuid.uuid4().hex
        await self.send_text(text, context_id, inline_speed_alpha)
        await self.flush()
        assembly = Assembly(text, context_id, self._seconds_of)
        while not assembly.complete:
            if not assembly.dones:
                event = await self.recv()
            else:
                try:
                    event = await self._receive(self._settle_seconds)
                except TimeoutError:
                    break  # nothing more of it after a done
            if event is None:
                if assembly.dones:
                    break
                raise errors.StreamCut("connection closed before the synthesis finished")
            if isinstance(event, ErrorEvent):
                if event.context_id in (None, context_id):
                    raise errors.BadRequest(event.message or "the server refused the request")
                log.debug("skipping an error of another context")
                continue
            if event.context_id != context_id:
                if assembly.dones:
                    break  # the server has moved on
                log.debug("skipping an event of another context")
                continue
            if on_audio is not None and isinstance(event, Chunk) and event.audio:
                on_audio()
                on_audio = None
            assembly.add(event)
        return assembly.result()

    def _seconds_of(self, audio: bytes) -> float | None:
        """Seconds of received audio, for the formats whose length needs no decoding."""
        params = self.params
        model = params.model
        rate = params.sampling_rate or (model.default_sampling_rate if model else None)
        return duration(audio, self.audio_format, rate) if rate else None


class WsSynthesizer:
    """Synthesis with word timestamps over /ws3: one connection per request (its voice is the
    connection's query), `segment=never` and one flush, the audio checked as HTTP's is."""

    def __init__(
        self,
        url: str,
        api_key: str | SecretStr | None = None,
        *,
        receive_timeout: float | None = DEFAULT_RECEIVE_TIMEOUT,
    ) -> None:
        self.url = url
        self._api_key = api_key
        self._receive_timeout = receive_timeout

    async def synthesize_timed(
        self,
        req: TtsRequest,
        fmt: AudioFormat = AudioFormat.PCM,
        *,
        on_audio: Callable[[], None] | None = None,
    ) -> Synthesis:
        """The audio of `req` and its word times; `on_audio` is called at its first audio."""
        async with RimeWsClient.connect(
            self.url,
            req.voice,
            self._api_key,
            audio_format=fmt,
            receive_timeout=self._receive_timeout,
        ) as ws:
            result = await ws.synthesize(
                req.text, inline_speed_alpha=req.inline_speed_alpha_text, on_audio=on_audio
            )
        check_audio(result.audio, fmt)
        return result
