"""Rime's HTTP streaming API (`POST /v1/rime-tts`), sync and async, on httpx.

One request per call and no retries: every failure becomes one of pipeline.rime.errors and the
caller decides. The API key travels only in the Authorization header; our log lines carry the
URL, model, format and sizes, never headers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import TracebackType
from typing import Self

import httpx
from pydantic import SecretStr

from pipeline import __version__
from pipeline.rime import errors
from pipeline.rime.checks import check_audio
from pipeline.rime.params import AudioFormat, TtsRequest

log = logging.getLogger(__name__)


def request_timeout(read_seconds: float) -> httpx.Timeout:
    """Timeouts of one request: `read_seconds` for each wait on the body, 10 s for the rest."""
    return httpx.Timeout(connect=10.0, read=read_seconds, write=10.0, pool=10.0)


# Reading stays generous: a long request on a busy account can pause between chunks.
DEFAULT_TIMEOUT = request_timeout(60.0)
# An error body past this is a proxy's page, not Rime's message.
_MAX_ERROR_BODY = 64 * 1024

# A raw mapping is sent as is: for parameters this client doesn't model yet, and for tests
# that need the server's own validation.
RequestBody = TtsRequest | Mapping[str, object]


def _json_body(req: RequestBody) -> Mapping[str, object]:
    return req.to_json() if isinstance(req, TtsRequest) else req


def _describe(req: RequestBody) -> tuple[object, int]:
    body = _json_body(req)
    text = body.get("text")
    return body.get("modelId"), len(text) if isinstance(text, str) else 0


class _Config:
    """What both clients share: where to send, the key, and how failures are named."""

    def __init__(self, api_key: str | SecretStr | None, url: str) -> None:
        if isinstance(api_key, str):
            api_key = SecretStr(api_key)
        # No key, or an empty one, sends no Authorization header (a local engine without keys).
        self.api_key: SecretStr | None = api_key if api_key and api_key.get_secret_value() else None
        self.url = url

    @property
    def secret(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None

    def headers(self, fmt: AudioFormat) -> dict[str, str]:
        headers = {"Accept": fmt.accept, "User-Agent": f"rime-batch/{__version__}"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key.get_secret_value()}"
        return headers

    def status_error(self, response: httpx.Response, body: bytes) -> errors.RimeError:
        return errors.error_for_status(
            response.status_code,
            body.decode("utf-8", errors="replace"),
            retry_after=response.headers.get("Retry-After"),
            secret=self.secret,
        )

    def transport_error(self, exc: httpx.HTTPError, *, body_started: bool) -> errors.RimeError:
        """The most specific of our errors for an httpx failure."""
        detail = errors.clean_message(str(exc) or type(exc).__name__, self.secret)
        if isinstance(exc, httpx.ConnectTimeout):
            # No connection at all, like a refusal: the host never answered.
            return errors.ConnectError(f"timed out connecting to {self.url}: {detail}")
        if isinstance(exc, httpx.TimeoutException):
            # A stall after the first bytes: the audio was generated, and billed.
            return errors.Timeout(f"timed out waiting ({self.url}): {detail}", billed=body_started)
        if isinstance(exc, httpx.ConnectError | httpx.ProxyError):
            return errors.ConnectError(f"cannot connect to {self.url}: {detail}")
        if isinstance(exc, httpx.UnsupportedProtocol):
            return errors.PermanentError(f"unsupported URL {self.url}: {detail}")
        if isinstance(exc, httpx.DecodingError) or body_started:
            return errors.StreamCut(f"audio stream cut: {detail}")
        # A reset or a close before the status line: nothing was received.
        return errors.ConnectError(f"connection lost before a response from {self.url}: {detail}")

    def check_length(self, response: httpx.Response) -> None:
        """StreamCut when fewer bytes arrived than Content-Length promised."""
        declared = response.headers.get("Content-Length")
        if declared is None or "Content-Encoding" in response.headers:
            return
        got = response.num_bytes_downloaded
        if declared.isdigit() and got != int(declared):
            raise errors.StreamCut(f"audio stream cut: {got} of {declared} bytes")


def _cut_error_body(chunks: list[bytes]) -> bytes:
    return b"".join(chunks)[:_MAX_ERROR_BODY]


class RimeHttpClient:
    """Blocking client for `POST /v1/rime-tts`; use as a context manager or call close()."""

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        *,
        url: str,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        verify_audio: bool = True,
    ) -> None:
        self._config = _Config(api_key, url)
        self._verify_audio = verify_audio
        self._client = httpx.Client(timeout=timeout)

    @property
    def url(self) -> str:
        """The endpoint requests go to."""
        return self._config.url

    def stream(self, req: RequestBody, fmt: AudioFormat = AudioFormat.PCM) -> Iterator[bytes]:
        """Audio bytes as they arrive; close the iterator to abandon the request early."""
        model, chars = _describe(req)
        log.debug("POST %s model=%s chars=%d format=%s", self.url, model, chars, fmt.value)
        started = time.monotonic()
        body_started = False
        try:
            with self._client.stream(
                "POST", self.url, json=_json_body(req), headers=self._config.headers(fmt)
            ) as response:
                if not response.is_success:
                    error_body: list[bytes] = []
                    with contextlib.suppress(httpx.HTTPError):
                        # A cut error body still has a status worth reporting.
                        for chunk in response.iter_bytes():
                            error_body.append(chunk)
                            if sum(map(len, error_body)) > _MAX_ERROR_BODY:
                                break
                    raise self._config.status_error(response, _cut_error_body(error_body))
                body_started = True
                yield from response.iter_bytes()
                self._config.check_length(response)
                log.debug(
                    "POST %s done: %d bytes in %.3fs",
                    self.url,
                    response.num_bytes_downloaded,
                    time.monotonic() - started,
                )
        except httpx.HTTPError as exc:
            raise self._config.transport_error(exc, body_started=body_started) from exc

    def synthesize(self, req: RequestBody, fmt: AudioFormat = AudioFormat.PCM) -> bytes:
        """The whole audio of one request, checked to be a complete file of `fmt`."""
        audio = b"".join(self.stream(req, fmt))
        if self._verify_audio:
            check_audio(audio, fmt)
        return audio

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRimeHttpClient:
    """Asyncio client for `POST /v1/rime-tts`; use as an async context manager or aclose()."""

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        *,
        url: str,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        verify_audio: bool = True,
        max_connections: int = 100,
    ) -> None:
        self._config = _Config(api_key, url)
        self._verify_audio = verify_audio
        limits = httpx.Limits(max_connections=max_connections)
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits)

    @property
    def url(self) -> str:
        """The endpoint requests go to."""
        return self._config.url

    async def stream(
        self,
        req: RequestBody,
        fmt: AudioFormat = AudioFormat.PCM,
        *,
        on_audio: Callable[[], None] | None = None,
    ) -> AsyncIterator[bytes]:
        """Audio bytes as they arrive; aclose() the iterator to abandon the request early.

        `on_audio` is called once, as the first audio byte arrives (from then on, Rime bills).
        """
        model, chars = _describe(req)
        log.debug("POST %s model=%s chars=%d format=%s", self.url, model, chars, fmt.value)
        started = time.monotonic()
        body_started = False
        try:
            async with self._client.stream(
                "POST", self.url, json=_json_body(req), headers=self._config.headers(fmt)
            ) as response:
                if not response.is_success:
                    error_body: list[bytes] = []
                    with contextlib.suppress(httpx.HTTPError):
                        # A cut error body still has a status worth reporting.
                        async for chunk in response.aiter_bytes():
                            error_body.append(chunk)
                            if sum(map(len, error_body)) > _MAX_ERROR_BODY:
                                break
                    raise self._config.status_error(response, _cut_error_body(error_body))
                body_started = True
                async for chunk in response.aiter_bytes():
                    if on_audio is not None and chunk:
                        on_audio()
                        on_audio = None
                    yield chunk
                self._config.check_length(response)
                log.debug(
                    "POST %s done: %d bytes in %.3fs",
                    self.url,
                    response.num_bytes_downloaded,
                    time.monotonic() - started,
                )
        except httpx.HTTPError as exc:
            raise self._config.transport_error(exc, body_started=body_started) from exc

    async def synthesize(
        self,
        req: RequestBody,
        fmt: AudioFormat = AudioFormat.PCM,
        *,
        on_audio: Callable[[], None] | None = None,
    ) -> bytes:
        """The whole audio of one request, checked to be a complete file of `fmt`.

        `on_audio` is called once, as the first audio byte arrives.
        """
        parts = [chunk async for chunk in self.stream(req, fmt, on_audio=on_audio)]
        audio = b"".join(parts)
        if self._verify_audio:
            check_audio(audio, fmt)
        return audio

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
