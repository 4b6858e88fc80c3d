"""`timeScaleFactor` and the parameters espeak has no use for, over real sockets.

Rime's documents: "A value above 1.0 slows down the audio, a value below 1.0 speeds up the
audio", "Accepted range is 0.4 to 2.5" (the HTTP references of Coda, Arcana and Mist v3), and it
"works over both HTTP and WebSocket endpoints" (the Playback speed page). The engine stretches
the audio by that factor, and refuses a value outside the range.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosedOK

from rime_local.server import RunningEngine
from tests.fixtures.engine import decoded_seconds

TEXT = "The quick brown fox jumps over the lazy dog. Then it rests <300> for a while."
RATE = 16000


def post(engine: RunningEngine, accept: str = "audio/pcm", **body: Any) -> httpx.Response:
    payload = {"text": TEXT, "speaker": "lyra", "modelId": "coda", "samplingRate": RATE, **body}
    return httpx.post(engine.http_url, json=payload, headers={"Accept": accept}, timeout=60)


def ok(engine: RunningEngine, accept: str = "audio/pcm", **body: Any) -> bytes:
    response = post(engine, accept, **body)
    assert response.status_code == 200, response.text
    return response.content


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / RATE


@settings(max_examples=12, deadline=None)
@given(factor=st.floats(0.4, 2.5), model=st.sampled_from(["coda", "mistv3", "arcana"]))
def test_time_scale_factor_scales_the_duration(
    engine: RunningEngine, factor: float, model: str
) -> None:
    speaker = "luna" if model != "coda" else "lyra"
    normal = seconds(ok(engine, modelId=model, speaker=speaker))
    scaled = seconds(ok(engine, modelId=model, speaker=speaker, timeScaleFactor=factor))
    assert scaled == pytest.approx(normal * factor, rel=0.01)


def test_above_one_is_slower_below_one_faster_measured_on_decoded_mp3(
    engine: RunningEngine,
) -> None:
    normal = decoded_seconds(ok(engine, "audio/mpeg"), "mp3")
    slow = decoded_seconds(ok(engine, "audio/mpeg", timeScaleFactor=2.0), "mp3")
    fast = decoded_seconds(ok(engine, "audio/mpeg", timeScaleFactor=0.5), "mp3")
    assert slow == pytest.approx(2 * normal, rel=0.03)
    assert fast == pytest.approx(normal / 2, rel=0.03)


def test_the_stretch_keeps_the_speech_and_a_factor_of_one_changes_nothing(
    engine: RunningEngine,
) -> None:
    normal = ok(engine)
    assert ok(engine, timeScaleFactor=1.0) == normal
    assert ok(engine, timeScaleFactor="1") == normal
    slow = ok(engine, timeScaleFactor=1.7)
    assert ok(engine, timeScaleFactor=1.7) == slow  # the same bytes every time
    loudest = max(
        abs(int.from_bytes(slow[i : i + 2], "little", signed=True)) for i in range(0, len(slow), 2)
    )
    assert loudest > 2000


def test_on_mist_v2_time_scale_factor_is_accepted_and_has_no_effect(
    engine: RunningEngine,
) -> None:
    body = {"modelId": "mistv2", "speaker": "cove"}
    assert ok(engine, timeScaleFactor=2.0, **body) == ok(engine, **body)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (0.39, "timeScaleFactor must be between 0.4 and 2.5"),
        (2.51, "timeScaleFactor must be between 0.4 and 2.5"),
        (0, "timeScaleFactor must be between 0.4 and 2.5"),
        (-1, "timeScaleFactor must be between 0.4 and 2.5"),
        ("slow", "timeScaleFactor must be a number"),
        (True, "timeScaleFactor must be a number"),
    ],
)
def test_a_time_scale_factor_outside_rimes_range_is_a_400(
    engine: RunningEngine, value: object, fragment: str
) -> None:
    response = post(engine, timeScaleFactor=value)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert fragment in response.text


def ws3(engine: RunningEngine, query: str) -> tuple[bytes, list[float]]:
    """PCM and word end times of one /ws3 synthesis of TEXT."""

    async def go() -> tuple[bytes, list[float]]:
        url = f"{engine.ws_url}/ws3?speaker=lyra&modelId=coda&audioFormat=pcm&samplingRate={RATE}"
        async with websockets.connect(f"{url}&{query}") as ws:
            await ws.send(json.dumps({"text": TEXT}))
            await ws.send(json.dumps({"operation": "eos"}))
            data, ends = b"", []
            try:
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if event["type"] == "chunk":
                        data += base64.b64decode(event["data"])
                    elif event["type"] == "timestamps":
                        ends += event["word_timestamps"]["end"]
            except ConnectionClosedOK:
                return data, ends

    return asyncio.run(go())


def test_over_ws3_the_factor_stretches_the_audio_and_its_timestamps(
    engine: RunningEngine,
) -> None:
    normal, normal_ends = ws3(engine, "")
    slow, slow_ends = ws3(engine, "timeScaleFactor=1.5")
    assert seconds(slow) == pytest.approx(1.5 * seconds(normal), rel=0.01)
    assert len(slow_ends) == len(normal_ends) > 5
    for plain, stretched in zip(normal_ends, slow_ends, strict=True):
        assert stretched == pytest.approx(1.5 * plain, abs=0.01)
    assert slow_ends[-1] <= seconds(slow) + 0.01
    assert slow == ok(engine, timeScaleFactor=1.5)


# Accepted and without effect on espeak; each must leave the audio exactly as it was.
NO_OPS: list[dict[str, object]] = [
    {"reduceLatency": True},
    {"reduceLatency": "false"},
    {"saveOovs": True},
    {"saveOovs": False},
    {"max_tokens": 1200},
    {"max_tokens": "5000"},
    {"max_tokens": 200},
    {"noTextNormalization": True},
    {"temperature": 0.5, "top_p": 1, "repetition_penalty": 1.5},
    {"language": "fr"},  # an old docs typo for `lang`: no parameter at all, so ignored
]


@pytest.mark.parametrize("knob", NO_OPS, ids=lambda k: ",".join(k))
def test_parameters_espeak_has_no_use_for_are_accepted_and_change_nothing(
    engine: RunningEngine, knob: dict[str, object]
) -> None:
    assert ok(engine, **knob) == ok(engine)


@pytest.mark.parametrize(
    ("knob", "fragment"),
    [
        ({"reduceLatency": "sometimes"}, "reduceLatency must be true or false"),
        ({"saveOovs": 3}, "saveOovs must be true or false"),
        ({"max_tokens": 199}, "max_tokens must be between 200 and 5000"),
        ({"max_tokens": 5001}, "max_tokens must be between 200 and 5000"),
        ({"max_tokens": 1200.5}, "max_tokens must be a whole number"),
        ({"max_tokens": "many"}, "max_tokens must be a number"),
    ],
)
def test_a_malformed_no_op_parameter_is_a_400(
    engine: RunningEngine, knob: dict[str, object], fragment: str
) -> None:
    response = post(engine, **knob)
    assert response.status_code == 400
    assert fragment in response.text


def test_the_no_op_parameters_are_accepted_in_a_ws3_query(engine: RunningEngine) -> None:
    plain, _ = ws3(engine, "")
    knobs, _ = ws3(engine, "reduceLatency=true&saveOovs=false&max_tokens=1200")
    assert knobs == plain
