"""The HTTP client, sync and async, against the local engine on a real loopback socket."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from pipeline.rime.checks import check_audio, duration, mp3_frames, parse_wav
from pipeline.rime.errors import (
    AuthError,
    BadRequest,
    ConnectError,
    RateLimited,
    ServerError,
    StreamCut,
    Timeout,
)
from pipeline.rime.http import AsyncRimeHttpClient, RequestBody, RimeHttpClient
from pipeline.rime.params import AudioFormat, TtsRequest, VoiceParams
from tests.fixtures.services import closed_port

TEXT = "The quick brown fox jumps over the lazy dog."
COVE = VoiceParams("cove", "mistv2", sampling_rate=22050)
KEY = "rk_test_SECRETKEY_7f3a9c1e5b"
BODY = {"text": TEXT, "speaker": "cove", "modelId": "mistv2"}

Synthesize = Callable[..., bytes]


def _sync(url: str, req: RequestBody, fmt: AudioFormat, **client: Any) -> bytes:
    with RimeHttpClient(url=url, **client) as rime:
        return rime.synthesize(req, fmt)


def _async(url: str, req: RequestBody, fmt: AudioFormat, **client: Any) -> bytes:
    async def run() -> bytes:
        async with AsyncRimeHttpClient(url=url, **client) as rime:
            return await rime.synthesize(req, fmt)

    return asyncio.run(run())


@pytest.fixture(params=["sync", "async"])
def synthesize(request: pytest.FixtureRequest) -> Synthesize:
    """One synthesis through the sync or the async client: each test runs with both."""
    run = _sync if request.param == "sync" else _async

    def call(
        url: str,
        req: RequestBody,
        fmt: AudioFormat = AudioFormat.PCM,
        *,
        api_key: str = "",
        **client: Any,
    ) -> bytes:
        return run(url, req, fmt, api_key=api_key, **client)

    return call


def _assert_no_key(err: BaseException, key: str = KEY) -> None:
    texts = [str(err), repr(err), "".join(traceback.format_exception(err))]
    cause = err.__cause__
    if cause is not None:
        texts += [str(cause), repr(cause)]
    for text in texts:
        assert key not in text


# -- success -----------------------------------------------------------------------------------


def test_pcm_is_whole_samples_of_a_plausible_length(engine: Any, synthesize: Synthesize) -> None:
    audio = synthesize(engine.http_url, TtsRequest(TEXT, COVE), AudioFormat.PCM)
    seconds = duration(audio, AudioFormat.PCM, 22050)
    assert seconds is not None
    # Nine words spoken: somewhere between one and eight seconds at any sane rate.
    assert 1.0 < seconds < 8.0
    assert len(audio) % 2 == 0
    # Not silence: a real voice swings well away from zero.
    samples = memoryview(audio).cast("h")
    assert max(abs(s) for s in samples) > 1000


def test_formats_agree_on_duration(engine: Any, synthesize: Synthesize) -> None:
    req = TtsRequest(TEXT, COVE)
    pcm = synthesize(engine.http_url, req, AudioFormat.PCM)
    wav = synthesize(engine.http_url, req, AudioFormat.WAV)
    mp3 = synthesize(engine.http_url, req, AudioFormat.MP3)
    pcm_seconds = len(pcm) / 2 / 22050

    info = parse_wav(wav)
    assert (info.sampling_rate, info.channels, info.sample_width) == (22050, 1, 2)
    assert info.duration == pytest.approx(pcm_seconds, rel=0.05)

    # MPEG-2 Layer III at 22050 Hz: 576 samples a frame.
    assert mp3_frames(mp3) * 576 / 22050 == pytest.approx(pcm_seconds, rel=0.1, abs=0.1)
    assert 1000 < len(mp3) < len(pcm)


def test_mulaw_for_telephony_is_one_byte_per_sample(engine: Any, synthesize: Synthesize) -> None:
    phone = VoiceParams("cove", "mistv2", sampling_rate=8000)
    mulaw = synthesize(engine.http_url, TtsRequest(TEXT, phone), AudioFormat.MULAW)
    pcm = synthesize(engine.http_url, TtsRequest(TEXT, phone), AudioFormat.PCM)
    assert len(mulaw) == pytest.approx(len(pcm) / 2, rel=0.05)
    assert 1.0 < len(mulaw) / 8000 < 8.0


def test_stream_yields_the_audio_in_pieces(engine: Any) -> None:
    with RimeHttpClient(url=engine.http_url, api_key="") as rime:
        chunks = list(rime.stream(TtsRequest(TEXT, COVE), AudioFormat.PCM))
    audio = b"".join(chunks)
    check_audio(audio, AudioFormat.PCM)
    assert len(chunks) >= 1
    assert all(chunks)
    assert len(audio) / 2 / 22050 > 1.0


async def test_async_stream_yields_audio_before_the_end(engine: Any) -> None:
    async with AsyncRimeHttpClient(url=engine.http_url, api_key="") as rime:
        sizes = [len(c) async for c in rime.stream(TtsRequest(TEXT, COVE), AudioFormat.WAV)]
    assert sum(sizes) > 44
    assert all(sizes)


# -- refused requests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"speaker": "cove", "modelId": "mistv2"}, "text"),
        ({**BODY, "text": "x" * 501}, "501"),
        ({**BODY, "speaker": "nobody-at-all"}, "nobody-at-all"),
        ({**BODY, "samplingRate": 3000}, "samplingRate"),
    ],
    ids=["missing-text", "too-long", "unknown-speaker", "bad-rate"],
)
def test_bad_requests_carry_the_servers_message(
    engine: Any, synthesize: Synthesize, body: Mapping[str, object], words: str
) -> None:
    with pytest.raises(BadRequest) as info:
        synthesize(engine.http_url, body)
    assert info.value.status == 400
    assert words in info.value.message
    assert str(info.value).startswith("Rime HTTP 400: ")


def test_an_unknown_speaker_passes_local_checks_and_the_server_refuses_it(
    engine: Any, synthesize: Synthesize
) -> None:
    req = TtsRequest(TEXT, VoiceParams("nobody-at-all", "mistv2"))
    with pytest.raises(BadRequest, match="nobody-at-all"):
        synthesize(engine.http_url, req)


# -- auth --------------------------------------------------------------------------------------


def test_the_right_key_is_accepted(engine_factory: Any, synthesize: Synthesize) -> None:
    keyed = engine_factory(api_keys=[KEY])
    audio = synthesize(keyed.http_url, TtsRequest(TEXT, COVE), api_key=KEY)
    assert len(audio) / 2 / 22050 > 1.0


@pytest.mark.parametrize("sent", ["", "rk_test_WRONGKEY_0000000000"])
def test_a_wrong_or_missing_key_is_an_auth_error_that_never_shows_it(
    engine_factory: Any, synthesize: Synthesize, sent: str
) -> None:
    keyed = engine_factory(api_keys=[KEY])
    with pytest.raises(AuthError) as info:
        synthesize(keyed.http_url, TtsRequest(TEXT, COVE), api_key=sent)
    assert info.value.status == 401
    assert info.value.message
    if sent:
        _assert_no_key(info.value, sent)


def test_no_log_line_carries_the_key(
    engine_factory: Any, synthesize: Synthesize, caplog: pytest.LogCaptureFixture
) -> None:
    keyed = engine_factory(api_keys=[KEY])
    wrong = KEY + "x"
    with caplog.at_level(logging.DEBUG):
        synthesize(keyed.http_url, TtsRequest(TEXT, COVE), api_key=KEY)
        with pytest.raises(AuthError):
            synthesize(keyed.http_url, TtsRequest(TEXT, COVE), api_key=wrong)
    # The debug lines of httpx, httpcore and ours were all captured, and none holds the key.
    assert any(keyed.http_url in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text


# -- transient failures ------------------------------------------------------------------------


def test_429_is_rate_limited_with_retry_after(engine_factory: Any, synthesize: Synthesize) -> None:
    busy = engine_factory(burst_429=1, retry_after_seconds=3)
    with pytest.raises(RateLimited) as info:
        synthesize(busy.http_url, TtsRequest(TEXT, COVE))
    assert info.value.status == 429
    assert info.value.retry_after == 3.0
    assert info.value.message


def test_5xx_is_a_server_error(engine_factory: Any, synthesize: Synthesize) -> None:
    failing = engine_factory(fault_error_rate=1.0)
    with pytest.raises(ServerError) as info:
        synthesize(failing.http_url, TtsRequest(TEXT, COVE))
    assert info.value.status in (500, 503)


@pytest.mark.parametrize("fmt", [AudioFormat.PCM, AudioFormat.MP3])
def test_a_cut_stream_is_a_stream_cut(
    engine_factory: Any, synthesize: Synthesize, fmt: AudioFormat
) -> None:
    cutting = engine_factory(fault_cut_rate=1.0)
    with pytest.raises(StreamCut) as info:
        synthesize(cutting.http_url, TtsRequest(TEXT, COVE), fmt)
    assert info.value.status is None


def test_a_stalled_stream_is_a_timeout(engine_factory: Any, synthesize: Synthesize) -> None:
    stalling = engine_factory(fault_stall_rate=1.0, stall_seconds=5.0)
    with pytest.raises(Timeout):
        synthesize(stalling.http_url, TtsRequest(TEXT, COVE), timeout=0.5)


def test_a_stream_that_stalls_after_its_first_bytes_was_billed(
    engine_factory: Any, synthesize: Synthesize
) -> None:
    # Rime had started sending: it generated the text, and charged for it.
    stalling = engine_factory(fault_stall_rate=1.0, stall_seconds=5.0)
    with pytest.raises(Timeout) as info:
        synthesize(stalling.http_url, TtsRequest(TEXT, COVE), timeout=0.5)
    assert info.value.billed


def test_a_closed_port_is_a_connect_error(synthesize: Synthesize) -> None:
    with closed_port() as port, pytest.raises(ConnectError) as info:
        url = f"http://127.0.0.1:{port}/v1/rime-tts"
        synthesize(url, TtsRequest(TEXT, COVE), api_key=KEY)
    assert url in str(info.value)
    assert not info.value.billed
    _assert_no_key(info.value)
