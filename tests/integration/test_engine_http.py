"""The engine's HTTP streaming endpoint against real sockets: formats, streaming, errors."""

from __future__ import annotations

import contextlib
import io
import time
import wave
from collections.abc import Callable

import httpx
import pytest

from rime_local.server import RunningEngine
from tests.fixtures.engine import decoded_seconds

SHORT = "Hello there. This is the local engine."


def post(engine: RunningEngine, accept: str, **body: object) -> httpx.Response:
    payload = {"text": SHORT, "speaker": "cove", **body}
    return httpx.post(engine.http_url, json=payload, headers={"Accept": accept}, timeout=30)


def test_pcm_is_raw_16_bit_audio_at_the_requested_rate(engine: RunningEngine) -> None:
    r16 = post(engine, "audio/pcm", samplingRate=16000)
    r8 = post(engine, "audio/L16", samplingRate=8000)
    assert r16.status_code == 200 and r16.headers["content-type"] == "audio/pcm"
    assert len(r16.content) % 2 == 0
    seconds16 = len(r16.content) / 2 / 16000
    seconds8 = len(r8.content) / 2 / 8000
    assert 1.0 < seconds16 < 6.0
    assert seconds8 == pytest.approx(seconds16, rel=0.02)
    # Real speech, not silence.
    assert max(r16.content[1::2]) > 16


def test_wav_streams_with_unknown_length_and_decodes(engine: RunningEngine) -> None:
    response = post(engine, "audio/wav", samplingRate=24000)
    assert response.status_code == 200
    data = response.content
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert data[4:8] == b"\xff\xff\xff\xff"
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getframerate() == 24000
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1
    pcm_seconds = (len(data) - 44) / 2 / 24000
    assert decoded_seconds(data) == pytest.approx(pcm_seconds, abs=0.05)


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        ("audio/mp3", "mp3"),
        ("audio/mpeg", "mp3"),
        ("audio/ogg;codecs=opus", "ogg"),
        ("audio/webm;codecs=opus", "webm"),
    ],
)
def test_compressed_formats_decode_to_the_speech_duration(
    engine: RunningEngine, accept: str, fmt: str
) -> None:
    reference = post(engine, "audio/pcm", samplingRate=24000).content
    expected = len(reference) / 2 / 24000
    response = post(engine, accept, samplingRate=24000)
    assert response.status_code == 200
    assert decoded_seconds(response.content, fmt) == pytest.approx(expected, abs=0.12)


def test_mulaw_at_8000_has_one_byte_per_sample(engine: RunningEngine) -> None:
    pcm = post(engine, "audio/pcm", samplingRate=8000).content
    mulaw = post(engine, "audio/PCMU", samplingRate=8000)
    assert mulaw.headers["content-type"] == "audio/x-mulaw"
    # espeak's output length wobbles by a fraction of a percent from call to call.
    assert len(mulaw.content) == pytest.approx(len(pcm) // 2, rel=0.02)
    decoded = decoded_seconds(mulaw.content, "mulaw", "-ar", "8000", "-ac", "1")
    assert decoded == pytest.approx(len(mulaw.content) / 8000, abs=0.002)


def test_longer_text_gives_longer_audio(engine: RunningEngine) -> None:
    short = post(engine, "audio/pcm", text="One short line.").content
    long = post(engine, "audio/pcm", text="One short line. " * 6).content
    assert len(long) > 4 * len(short)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"text": None}, "text is required"),
        ({"text": "x" * 501}, "501 characters"),
        ({"speaker": "nobody"}, "unknown speaker"),
        ({"speaker": None}, "speaker is required"),
        ({"modelId": "mistv9"}, "unknown modelId"),
        ({"samplingRate": 2000}, "samplingRate"),
        ({"samplingRate": 50000}, "samplingRate"),
        ({"modelId": "arcana", "speaker": "luna", "samplingRate": 11025}, "samplingRate"),
        ({"speedAlpha": 0}, "speedAlpha"),
        ({"inlineSpeedAlpha": "3, fast"}, "inlineSpeedAlpha"),
        ({"lang": "spa"}, "speaks 'eng'"),
    ],
)
def test_bad_requests_get_a_plain_text_400(
    engine: RunningEngine, body: dict[str, object], fragment: str
) -> None:
    payload = {"text": SHORT, "speaker": "cove", **body}
    payload = {k: v for k, v in payload.items() if v is not None}
    response = httpx.post(engine.http_url, json=payload, headers={"Accept": "audio/pcm"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert fragment in response.text


def test_500_characters_is_still_accepted(engine: RunningEngine) -> None:
    text = ("Words and more words. " * 30)[:499] + "."
    assert len(text) == 500
    assert post(engine, "audio/pcm", text=text).status_code == 200


def test_unknown_accept_is_a_400_and_star_gets_mp3(engine: RunningEngine) -> None:
    assert post(engine, "application/json").status_code == 400
    response = post(engine, "*/*")
    assert response.status_code == 200 and response.headers["content-type"] == "audio/mpeg"


def test_sse_only_for_mistv2(engine: RunningEngine) -> None:
    refused = post(engine, "text/event-stream", modelId="mistv3")
    assert refused.status_code == 400 and "mistv2" in refused.text
    response = post(engine, "text/event-stream", modelId="mistv2", samplingRate=16000)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block]
    assert events[0].startswith("event: chunk\ndata: {")
    assert events[-1] == 'event: done\ndata: {"type": "done", "contextId": null}'


def test_keys_configured_means_401_without_the_right_one(engine_factory) -> None:  # type: ignore[no-untyped-def]
    locked = engine_factory(api_keys=["sekrit"])
    body = {"text": SHORT, "speaker": "cove"}
    missing = httpx.post(locked.http_url, json=body)
    wrong = httpx.post(locked.http_url, json=body, headers={"Authorization": "Bearer nope"})
    right = httpx.post(locked.http_url, json=body, headers={"Authorization": "Bearer sekrit"})
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert missing.headers["content-type"].startswith("text/plain")
    assert "sekrit" not in wrong.text


def test_first_bytes_arrive_long_before_the_last(engine_factory) -> None:  # type: ignore[no-untyped-def]
    paced = engine_factory(pacing=10.0)
    text = "This sentence is spoken first. " + "Then many more words follow it. " * 8
    started = time.monotonic()
    total = 0
    while_streaming = None
    with httpx.stream(
        "POST",
        paced.http_url,
        json={"text": text, "speaker": "cove"},
        headers={"Accept": "audio/pcm"},
        timeout=30,
    ) as response:
        for chunk in response.iter_bytes():
            if while_streaming is None and chunk:
                # The order of events, not their times: audio arrives while the synthesis is
                # still under way, its last sentences not yet spoken.
                while_streaming = paced.metrics()
            total += len(chunk)
    elapsed = time.monotonic() - started
    audio_seconds = total / 2 / 22050
    assert while_streaming is not None
    assert (while_streaming["in_flight"], while_streaming["completed"]) == (1, 0)
    assert paced.metrics()["completed"] == 1
    # Pacing is the engine sleeping: a lower bound that load can only make longer.
    assert elapsed >= audio_seconds / 10 * 0.9


def test_refused_keys_are_echoed_only_when_asked(engine_factory) -> None:  # type: ignore[no-untyped-def]
    locked = engine_factory(api_keys=["sekrit"], echo_refused_key_at=30)
    body = {"text": SHORT, "speaker": "cove"}
    wrong = httpx.post(locked.http_url, json=body, headers={"Authorization": "Bearer nope-123"})
    assert wrong.status_code == 401
    assert wrong.text.index("nope-123") == 30
    assert "sekrit" not in wrong.text
    locked.configure(echo_refused_key_at=-1)
    quiet = httpx.post(locked.http_url, json=body, headers={"Authorization": "Bearer nope-123"})
    assert quiet.status_code == 401 and "nope-123" not in quiet.text


def test_billing_counts_every_synthesis_whose_audio_started(engine_factory) -> None:  # type: ignore[no-untyped-def]
    running = engine_factory(api_keys=["k"], fault_seed=1)
    headers = {"Authorization": "Bearer k", "Accept": "audio/pcm"}
    long_text = "A sentence long enough to stream more than a few kilobytes of audio. " * 3

    def send(text: str, **auth: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(running.http_url, json={"text": text, "speaker": "cove"}, **auth)

    send(SHORT, headers=headers)
    send(SHORT, headers={"Accept": "audio/pcm"})  # 401: nothing generated
    running.configure(fault_error_rate=1.0)
    send(SHORT, headers=headers)  # 5xx: nothing generated
    running.configure(fault_error_rate=0.0, fault_cut_rate=1.0)
    send(long_text, headers=headers)  # cut after its first kilobytes: generated, billed
    metrics = running.metrics()
    assert metrics["faults"]["cut"] == 1
    assert metrics["faults_total"] == 2  # the cut and one 5xx
    assert (metrics["requests"], metrics["completed"], metrics["audio_started"]) == (4, 1, 2)
    assert metrics["billed_characters"] == len(SHORT) + len(long_text)
    assert metrics["characters"] == len(SHORT)


def test_implausible_audio_is_whole_and_far_too_long(engine_factory) -> None:  # type: ignore[no-untyped-def]
    running = engine_factory(fault_implausible_rate=1.0)
    pcm = post(running, "audio/pcm", samplingRate=8000)
    wav = post(running, "audio/wav", samplingRate=8000)
    assert pcm.status_code == wav.status_code == 200
    # Silence follows the speech: far past what any voice needs for the text.
    assert len(pcm.content) / 2 / 8000 > 10 + len(SHORT)
    assert decoded_seconds(wav.content) == pytest.approx(len(pcm.content) / 2 / 8000, abs=0.05)
    assert running.metrics()["faults"] == {"implausible": 2}


def test_metrics_count_valid_requests_by_voice(
    engine_factory: Callable[..., RunningEngine],
) -> None:
    running = engine_factory()
    assert post(running, "audio/pcm").status_code == 200
    assert post(running, "audio/pcm", speaker="marsh").status_code == 200
    assert post(running, "audio/pcm", speaker="marsh").status_code == 200
    assert post(running, "audio/pcm", modelId="arcana", speaker="luna").status_code == 200
    # Refused before any synthesis: not a voice anyone heard.
    assert post(running, "audio/pcm", modelId="arcana", speaker="cove").status_code == 400

    metrics = running.metrics()

    # Without a modelId, the HTTP endpoint speaks with its default model.
    assert metrics["voices"] == {"mistv3/cove": 1, "mistv3/marsh": 2, "arcana/luna": 1}
    assert metrics["rejected_400"] == 1
    running.reset_metrics()
    assert running.metrics()["voices"] == {}
