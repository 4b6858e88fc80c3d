"""The engine's knobs over real sockets: concurrency and rate limits, bursts, latency, faults,
metrics and runtime changes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from rime_local.server import RunningEngine
from tests.fixtures.services import poll_until

Factory = Callable[..., RunningEngine]
BODY = {"text": "Limits apply here.", "speaker": "cove"}
PCM = {"Accept": "audio/pcm"}


async def _fire(url: str, count: int, headers: dict[str, str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        return await asyncio.gather(
            *(client.post(url, json=BODY, headers=headers) for _ in range(count))
        )


def test_requests_past_the_concurrency_limit_get_429(engine_factory: Factory) -> None:
    # Each admitted request holds its slot for over a second, so all twenty overlap.
    limited = engine_factory(concurrency_per_key=5, ttfb_ms=1500, retry_after_seconds=2)
    responses = asyncio.run(_fire(limited.http_url, 20, PCM))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 5, 429: 15}
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "2"
            assert r.headers["content-type"].startswith("text/plain")
            assert "concurrent" in r.text
        else:
            assert len(r.content) > 10000
    metrics = limited.metrics()
    assert metrics["peak_in_flight"] == 5
    assert metrics["rejected_429"] == 15
    assert metrics["completed"] == 5
    assert metrics["in_flight"] == 0


def test_concurrency_is_counted_per_key(engine_factory: Factory) -> None:
    limited = engine_factory(api_keys=["a", "b"], concurrency_per_key=2, ttfb_ms=1000)

    async def both() -> list[httpx.Response]:
        a = _fire(limited.http_url, 3, {**PCM, "Authorization": "Bearer a"})
        b = _fire(limited.http_url, 3, {**PCM, "Authorization": "Bearer b"})
        results = await asyncio.gather(a, b)
        return [*results[0], *results[1]]

    statuses = Counter(r.status_code for r in asyncio.run(both()))
    assert statuses == {200: 4, 429: 2}


def test_requests_per_minute(engine_factory: Factory) -> None:
    limited = engine_factory(requests_per_minute=3)
    statuses = [httpx.post(limited.http_url, json=BODY, headers=PCM).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


def test_a_burst_of_429s_then_service_and_again_at_runtime(engine_factory: Factory) -> None:
    bursty = engine_factory(burst_429=2)
    statuses = [httpx.post(bursty.http_url, json=BODY, headers=PCM).status_code for _ in range(3)]
    assert statuses == [429, 429, 200]
    bursty.configure(burst_429_seconds=2.0)
    assert httpx.post(bursty.http_url, json=BODY, headers=PCM).status_code == 429
    poll_until(
        lambda: httpx.post(bursty.http_url, json=BODY, headers=PCM).status_code == 200,
        10,
        "the end of the 429 window",
        interval=0.2,
    )


def test_added_time_to_first_byte(engine_factory: Factory) -> None:
    slow = engine_factory(ttfb_ms=400)
    started = time.monotonic()
    with httpx.stream("POST", slow.http_url, json=BODY, headers=PCM) as response:
        next(response.iter_raw())
        first = time.monotonic() - started
    assert first >= 0.4


def test_injected_errors_are_500_or_503(engine_factory: Factory) -> None:
    faulty = engine_factory(fault_error_rate=1.0, fault_seed=7)
    responses = [httpx.post(faulty.http_url, json=BODY, headers=PCM) for _ in range(6)]
    assert {r.status_code for r in responses} <= {500, 503}
    assert all(r.headers["content-type"].startswith("text/plain") for r in responses)
    faults = faulty.metrics()["faults"]
    assert sum(faults.values()) == 6
    assert set(faults) <= {"http_500", "http_503"}


def test_injected_cut_truncates_the_body(engine_factory: Factory) -> None:
    faulty = engine_factory(fault_cut_rate=1.0)
    received = 0
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", faulty.http_url, json=BODY, headers=PCM) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            received += len(chunk)
    assert 0 < received < 8192
    assert faulty.metrics()["faults"] == {"cut": 1}


def test_injected_stall_pauses_the_body_then_finishes(engine_factory: Factory) -> None:
    faulty = engine_factory(fault_stall_rate=1.0, stall_seconds=1.0)
    started = time.monotonic()
    response = httpx.post(faulty.http_url, json=BODY, headers=PCM, timeout=10)
    assert response.status_code == 200
    assert time.monotonic() - started >= 1.0
    assert len(response.content) > 10000
    # A client with a short read timeout sees the stall as a timeout.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(faulty.http_url, json=BODY, headers=PCM, timeout=0.4)


def test_faults_replay_with_the_same_seed(engine_factory: Factory) -> None:
    def outcomes(running: RunningEngine) -> list[int]:
        return [httpx.post(running.http_url, json=BODY, headers=PCM).status_code for _ in range(12)]

    first = outcomes(engine_factory(fault_error_rate=0.5, fault_seed=42))
    second = outcomes(engine_factory(fault_error_rate=0.5, fault_seed=42))
    assert first == second
    assert 200 in first and (500 in first or 503 in first)


def test_metrics_count_and_reset(engine_factory: Factory) -> None:
    counted = engine_factory()
    for _ in range(3):
        httpx.post(counted.http_url, json=BODY, headers=PCM)
    httpx.post(counted.http_url, json={"speaker": "cove"}, headers=PCM)
    metrics = httpx.get(counted.base_url + "/metrics").json()
    assert metrics["requests"] == 4
    assert metrics["completed"] == 3
    assert metrics["rejected_400"] == 1
    assert metrics["characters"] == 3 * len(BODY["text"])
    assert metrics["mean_request_seconds"] > 0
    assert metrics["audio_seconds"] > 1
    reset = httpx.post(counted.base_url + "/metrics/reset").json()
    assert reset["requests"] == 0 and reset["completed"] == 0
    assert httpx.get(counted.base_url + "/health").text == "ok"


def test_knobs_change_over_http_at_runtime(engine_factory: Factory) -> None:
    running = engine_factory()
    assert httpx.post(running.http_url, json=BODY).status_code == 200
    changed = httpx.post(running.base_url + "/admin/config", json={"api_keys": ["k1"]})
    assert changed.status_code == 200 and changed.json()["api_keys"] == 1
    assert httpx.post(running.http_url, json=BODY).status_code == 401
    bad = httpx.post(running.base_url + "/admin/config", json={"no_such_knob": 1})
    assert bad.status_code == 400 and "no_such_knob" in bad.text
    assert httpx.get(running.base_url + "/admin/config").json()["api_keys"] == 1


def test_a_websocket_holds_a_slot_while_open(engine_factory: Factory) -> None:
    import websockets
    from websockets.exceptions import InvalidStatus

    limited = engine_factory(concurrency_per_key=1)

    async def go() -> tuple[int, int]:
        async with websockets.connect(limited.ws_url + "/ws3?speaker=cove"):
            refused = httpx.post(limited.http_url, json=BODY).status_code
            try:
                async with websockets.connect(limited.ws_url + "/ws3?speaker=cove"):
                    second = 101
            except InvalidStatus as exc:
                second = exc.response.status_code
        return refused, second

    assert asyncio.run(go()) == (429, 429)
    assert httpx.post(limited.http_url, json=BODY).status_code == 200


def _ffmpeg_children() -> list[int]:
    """ffmpeg processes whose parent is this test process (the engine runs in it)."""
    import os
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split()
        except OSError:
            continue
        if int(fields[3]) == os.getpid() and "ffmpeg" in fields[1]:
            found.append(int(fields[0]))
    return found


def test_a_client_hanging_up_frees_its_slot_and_stops_ffmpeg(engine_factory: Factory) -> None:
    paced = engine_factory(pacing=1.0, concurrency_per_key=1)
    body = {"text": "A long answer that the caller will not wait for. " * 4, "speaker": "cove"}
    with httpx.stream("POST", paced.http_url, json=body, headers={"Accept": "audio/mp3"}) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()  # kept: a dropped iterator closes the response
        next(chunks)
        assert paced.metrics()["in_flight"] == 1
        assert _ffmpeg_children()
    poll_until(
        lambda: not paced.metrics()["in_flight"] and not _ffmpeg_children(),
        10,
        "the slot to be freed and ffmpeg to end",
        detail=lambda: f"{paced.metrics()} {_ffmpeg_children()}",
    )
    assert paced.metrics()["completed"] == 0
    assert httpx.post(paced.http_url, json=BODY, headers=PCM).status_code == 200


def test_websocket_faults_fail_the_upgrade_or_close_with_1011(engine_factory: Factory) -> None:
    import json

    import websockets
    from websockets.exceptions import ConnectionClosedError, InvalidStatus

    erroring = engine_factory(fault_error_rate=1.0)
    cutting = engine_factory(fault_cut_rate=1.0)

    async def upgrade_status() -> int:
        try:
            async with websockets.connect(erroring.ws_url + "/ws3?speaker=cove"):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    async def close_code() -> int | None:
        async with websockets.connect(cutting.ws_url + "/ws3?speaker=cove") as ws:
            await ws.send(json.dumps({"text": "This will be cut off partway through. " * 3}))
            with pytest.raises(ConnectionClosedError):
                while True:
                    await ws.recv()
            return ws.close_code

    assert asyncio.run(upgrade_status()) in {500, 503}
    assert asyncio.run(close_code()) == 1011
    assert cutting.metrics()["faults"] == {"cut": 1}


def test_the_engine_refuses_to_listen_beyond_loopback() -> None:
    from rime_local.config import EngineConfig

    with pytest.raises(ValueError, match="loopback"):
        EngineConfig(host="0.0.0.0")
