"""The /ws3 client against the local engine on a real loopback socket."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import traceback
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve

from pipeline.rime.checks import duration
from pipeline.rime.errors import (
    AuthError,
    BadRequest,
    ConnectError,
    RateLimited,
    ServerError,
    StreamCut,
)
from pipeline.rime.events import Chunk, Done, ErrorEvent, Event, Timestamps
from pipeline.rime.params import AudioFormat, Segmenting, VoiceParams
from pipeline.rime.ws import RimeWsClient
from tests.fixtures.services import closed_port

RATE = 22050
COVE = VoiceParams("cove", "mistv2", sampling_rate=RATE)
KEY = "rk_test_WSSECRET_c0ffee1234"


def _seconds(audio: bytes) -> float:
    seconds = duration(audio, AudioFormat.PCM, RATE)
    assert seconds is not None
    return seconds


async def _until_done(ws: RimeWsClient) -> list[Event]:
    events: list[Event] = []
    while True:
        event = await ws.recv()
        assert event is not None, f"closed before done; got {events}"
        events.append(event)
        if isinstance(event, Done):
            return events


async def test_text_and_flush_give_chunks_timestamps_and_done(engine: Any) -> None:
    async with RimeWsClient.connect(engine.ws_url, COVE, "") as ws:
        await ws.send_text("Hello there, ", "ctx-1")
        await ws.send_text("how are you today?", "ctx-1")
        await ws.flush()
        events = await _until_done(ws)

    chunks = [e for e in events if isinstance(e, Chunk)]
    stamps = [e for e in events if isinstance(e, Timestamps)]
    assert chunks and stamps
    assert isinstance(events[-1], Done)
    assert {e.context_id for e in chunks + stamps} | {events[-1].context_id} == {"ctx-1"}
    audio = b"".join(c.audio for c in chunks)
    assert len(audio) % 2 == 0
    assert 0.8 < _seconds(audio) < 8.0
    words = [w for s in stamps for w in s.words]
    assert [w.strip(",.?").lower() for w in words] == [
        "hello",
        "there",
        "how",
        "are",
        "you",
        "today",
    ]


async def test_synthesize_gathers_monotonic_word_times_within_the_audio(engine: Any) -> None:
    text = "Batch rendering turns long scripts into finished audio, one sentence at a time."
    async with RimeWsClient.connect(engine.ws_url, COVE, "") as ws:
        result = await ws.synthesize(text)

    seconds = _seconds(result.audio)
    # Words come back in text order (the local engine may merge a short word into its
    # neighbour, so the check is "in order, nearly all", not "all").
    remaining = iter(text.split())
    assert all(any(w.word == t for t in remaining) for w in result.words)
    assert len(result.words) >= 0.8 * len(text.split())
    previous_end = 0.0
    for word in result.words:
        assert 0.0 <= word.start <= word.end <= seconds + 0.05
        assert word.start >= previous_end - 1e-6
        previous_end = word.end
    # The last word ends near the end of the audio, not somewhere in the middle.
    assert result.words[-1].end > seconds * 0.6


async def test_each_synthesis_on_one_connection_gets_its_own_context(engine: Any) -> None:
    async with RimeWsClient.connect(engine.ws_url, COVE, "") as ws:
        first = await ws.synthesize("First sentence.", "one")
        second = await ws.synthesize("And here is the second, a longer one.", "two")
    assert (first.context_id, second.context_id) == ("one", "two")
    assert [w.word.strip(".") for w in first.words] == ["First", "sentence"]
    assert _seconds(second.audio) > _seconds(first.audio)
    assert second.words[0].start < 0.5  # times restart with each synthesis


async def test_clear_drops_the_buffered_text(engine: Any) -> None:
    async with RimeWsClient.connect(engine.ws_url, COVE, "") as ws:
        await ws.send_text("This sentence should never be spoken at all. ", "dropped")
        await ws.clear()
        result = await ws.synthesize("Kept.", "kept")
    assert [w.word.strip(".") for w in result.words] == ["Kept"]
    assert _seconds(result.audio) < 2.0


async def test_eos_speaks_the_buffer_ends_with_done_and_closes(engine: Any) -> None:
    async with RimeWsClient.connect(engine.ws_url, COVE, "") as ws:
        await ws.send_text("Goodbye for now.", "last")
        await ws.eos()
        events = [event async for event in ws]  # ends when the server closes
        with pytest.raises(ConnectError, match="closed"):
            await ws.send_text("Anyone there?")
    assert isinstance(events[-1], Done)
    assert events[-1].context_id == "last"
    assert _seconds(b"".join(e.audio for e in events if isinstance(e, Chunk))) > 0.3


async def test_an_error_event_leaves_the_connection_usable(engine: Any) -> None:
    async with RimeWsClient.connect(engine.ws_url, COVE, "") as ws:
        await ws.send_json({"operation": "dance"})
        event = await ws.recv()
        assert isinstance(event, ErrorEvent)
        assert event.message
        result = await ws.synthesize("Still here.")
    assert [w.word.strip(".") for w in result.words] == ["Still", "here"]


async def test_segment_by_sentence_synthesizes_without_a_flush(engine: Any) -> None:
    async with RimeWsClient.connect(engine.ws_url, COVE, "", segment=Segmenting.BY_SENTENCE) as ws:
        await ws.send_text("No flush is needed here. ", "auto")
        events = await _until_done(ws)
        with pytest.raises(ValueError, match="segment=never"):
            await ws.synthesize("Refused.")
    assert any(isinstance(e, Chunk) for e in events)


async def test_mulaw_over_websocket(engine: Any) -> None:
    phone = VoiceParams("cove", "mistv2", sampling_rate=8000)
    async with RimeWsClient.connect(engine.ws_url, phone, "", audio_format=AudioFormat.MULAW) as ws:
        result = await ws.synthesize("Press one for sales.")
    assert 0.5 < len(result.audio) / 8000 < 5.0
    assert result.words[-1].end <= len(result.audio) / 8000 + 0.05


async def test_bad_parameters_are_a_bad_request(engine: Any) -> None:
    nobody = VoiceParams("nobody-at-all", "mistv2")
    with pytest.raises(BadRequest, match="nobody-at-all"):
        async with RimeWsClient.connect(engine.ws_url, nobody, "") as ws:
            await ws.synthesize("Hello.")


async def test_a_wrong_key_is_an_auth_error_without_the_key(engine_factory: Any) -> None:
    keyed = engine_factory(api_keys=[KEY])
    wrong = "rk_test_WRONGWS_999999999"
    with pytest.raises(AuthError) as info:
        async with RimeWsClient.connect(keyed.ws_url, COVE, wrong):
            pass
    err = info.value
    for text in (str(err), repr(err), "".join(traceback.format_exception(err))):
        assert wrong not in text
    async with RimeWsClient.connect(keyed.ws_url, COVE, KEY) as ws:
        assert (await ws.synthesize("Welcome.")).audio


async def test_handshake_debug_logs_never_show_the_key(
    engine_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    keyed = engine_factory(api_keys=[KEY])
    with caplog.at_level(logging.DEBUG):
        async with RimeWsClient.connect(keyed.ws_url, COVE, KEY) as ws:
            await ws.synthesize("Logged.")
    # The handshake headers were logged (so the check is real), with the key hidden.
    assert "Authorization: [redacted]" in caplog.text
    assert KEY not in caplog.text


async def test_a_closed_port_is_a_connect_error() -> None:
    with closed_port() as port, pytest.raises(ConnectError, match=str(port)):
        async with RimeWsClient.connect(f"ws://127.0.0.1:{port}", COVE, KEY):
            pass


async def test_a_refused_upgrade_for_capacity_is_rate_limited(engine_factory: Any) -> None:
    busy = engine_factory(burst_429=1, retry_after_seconds=2)
    with pytest.raises(RateLimited) as info:
        async with RimeWsClient.connect(busy.ws_url, COVE, ""):
            pass
    assert (info.value.status, info.value.retry_after) == (429, 2.0)


async def test_a_failing_server_is_a_server_error(engine_factory: Any) -> None:
    failing = engine_factory(fault_error_rate=1.0)
    with pytest.raises(ServerError) as info:
        async with RimeWsClient.connect(failing.ws_url, COVE, ""):
            pass
    assert info.value.status in (500, 503)


async def test_a_connection_cut_mid_audio_is_a_stream_cut(engine_factory: Any) -> None:
    cutting = engine_factory(fault_cut_rate=1.0)
    async with RimeWsClient.connect(cutting.ws_url, COVE, "") as ws:
        with pytest.raises(StreamCut, match="1011"):
            await ws.synthesize("This synthesis is long enough to be cut off partway through.")


async def test_synthesize_returns_at_the_engine_s_one_done_with_all_of_the_text(
    engine: Any,
) -> None:
    text = "First of three sentences. The second one follows. And the third ends it."
    async with RimeWsClient.connect(engine.ws_url, COVE, "", settle_seconds=5.0) as ws:
        started = time.monotonic()
        result = await ws.synthesize(text, "whole")
        elapsed = time.monotonic() - started
        again = await ws.synthesize("Once more.", "again")
    # Returned at the done that timed the last word, without waiting to see if more follows.
    assert elapsed < 4.0
    reference = httpx.post(
        engine.http_url,
        json={"text": text, "speaker": "cove", "modelId": "mistv2", "samplingRate": RATE},
        headers={"Accept": "audio/pcm"},
        timeout=30,
    )
    assert _seconds(result.audio) == pytest.approx(_seconds(reference.content), abs=0.02)
    assert [w.word for w in result.words] == text.split()
    assert [w.word for w in again.words] == ["Once", "more."]


# A server that answers one flush in pieces, each with its own timestamps (timed from the
# piece's start) and its own done, a moment apart: as Rime's cloud may.
_PIECES = [(["Alpha", "beta."], 0.8), (["Gamma", "delta."], 0.6)]


async def _piecewise(ws: ServerConnection) -> None:
    context = None
    async for raw in ws:
        message = json.loads(raw)
        if "text" in message:
            context = message.get("contextId")
            continue
        for words, seconds in _PIECES:
            audio = b"\0\0" * round(seconds * RATE)
            step = seconds / 2 / len(words)
            events = [
                {"type": "chunk", "data": base64.b64encode(audio).decode(), "contextId": context},
                {
                    "type": "timestamps",
                    "word_timestamps": {
                        "words": words,
                        "start": [i * step for i in range(len(words))],
                        "end": [(i + 1) * step for i in range(len(words))],
                    },
                    "contextId": context,
                },
                {"type": "done", "contextId": context},
            ]
            for event in events:
                await ws.send(json.dumps(event))
            await asyncio.sleep(0.2)  # the next piece starts a little later


async def test_synthesize_gathers_an_utterance_sent_in_pieces_with_a_done_each() -> None:
    async with serve(_piecewise, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with RimeWsClient.connect(f"ws://127.0.0.1:{port}", COVE, "") as ws:
            first = await ws.synthesize("Alpha beta. Gamma delta.", "one")
            second = await ws.synthesize("Alpha beta. Gamma delta.", "two")
    for result in (first, second):
        assert _seconds(result.audio) == pytest.approx(0.8 + 0.6)
        assert [w.word for w in result.words] == ["Alpha", "beta.", "Gamma", "delta."]
        # The second piece's times start where its audio does, 0.8 s in.
        assert [round(w.start, 3) for w in result.words] == [0.0, 0.2, 0.8, 0.95]
        assert [round(w.end, 3) for w in result.words] == [0.2, 0.4, 0.95, 1.1]
    assert second.context_id == "two"
