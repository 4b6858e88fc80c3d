"""The engine's WebSocket endpoints over real sockets: segment modes, context ids, events."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from rime_local.config import EngineConfig
from rime_local.server import RunningEngine, start_in_thread
from tests.fixtures.engine import decoded_seconds

Event = dict[str, Any]


@pytest.fixture(scope="module")
def busy_engine() -> Iterator[RunningEngine]:
    """Every synthesis takes at least 400 ms, so messages sent right after land while busy."""
    running = start_in_thread(EngineConfig(ttfb_ms=400))
    try:
        yield running
    finally:
        running.stop()


async def receive_events(ws: Any, dones: int | None = None, timeout: float = 10) -> list[Event]:
    """JSON events until the server closes (or `dones` done events arrived)."""
    events: list[Event] = []
    while dones is None or sum(e["type"] == "done" for e in events) < dones:
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout)
        except ConnectionClosedOK:
            break
        events.append(json.loads(raw))
    return events


def batches(events: list[Event]) -> list[list[Event]]:
    """Events grouped per synthesis (each group ends with its done)."""
    groups: list[list[Event]] = [[]]
    for event in events:
        groups[-1].append(event)
        if event["type"] == "done":
            groups.append([])
    return [g for g in groups if g]


def words(batch: list[Event]) -> list[str]:
    return [w for e in batch if e["type"] == "timestamps" for w in e["word_timestamps"]["words"]]


def audio(batch: list[Event]) -> bytes:
    return b"".join(base64.b64decode(e["data"]) for e in batch if e["type"] == "chunk")


def run(
    engine: RunningEngine,
    path: str,
    script: Callable[[Any], Any],
) -> Any:
    async def go() -> Any:
        async with websockets.connect(engine.ws_url + path) as ws:
            return await script(ws)

    return asyncio.run(go())


async def send_all(ws: Any, *messages: Event | str, pause: float = 0.0) -> None:
    for message in messages:
        await ws.send(message if isinstance(message, str) else json.dumps(message))
        if pause:
            await asyncio.sleep(pause)


def test_by_sentence_fires_at_sentence_ends_but_not_inside_numbers_or_abbreviations(
    busy_engine: RunningEngine,
) -> None:
    tokens = ["Take ", "2.5ml ", "of ", "the ", "solution. ", "Dr. ", "Smith ", "agrees. ", "And"]

    async def script(ws: Any) -> list[Event]:
        await send_all(ws, *({"text": t} for t in tokens))
        first = await receive_events(ws, dones=1)
        await send_all(ws, {"text": " then some"}, {"operation": "eos"})
        return first + await receive_events(ws)

    busy_engine.reset_metrics()
    groups = batches(run(busy_engine, "/ws3?speaker=cove&segment=bySentence", script))
    # The first sentence went to synthesis alone; the second was due before it finished, so it
    # joined the same batch: one done for both. "And" waited for more text.
    assert [words(g) for g in groups] == [
        ["Take", "2.5ml", "of", "the", "solution.", "Dr.", "Smith", "agrees."],
        ["And", "then", "some"],
    ]
    # Three syntheses: no early cut at "2." or "Dr.".
    assert busy_engine.metrics()["completed"] == 3
    assert all(audio(g) for g in groups)
    assert all(g[-1] == {"type": "done", "contextId": None} for g in groups)


def test_default_segment_is_by_sentence(engine: RunningEngine) -> None:
    async def script(ws: Any) -> list[Event]:
        await send_all(ws, {"text": "No end yet"})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)
        await send_all(ws, {"text": " but now."})
        return await receive_events(ws, dones=1)

    [batch] = batches(run(engine, "/ws3?speaker=cove&segment=", script))
    assert words(batch) == ["No", "end", "yet", "but", "now."]


def test_never_waits_for_flush_and_queues_a_flush_while_busy(busy_engine: RunningEngine) -> None:
    async def script(ws: Any) -> list[Event]:
        await send_all(
            ws,
            {"text": "First sentence. ", "contextId": "a"},
            {"text": "Still first.", "contextId": "a"},
        )
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.6)
        await send_all(
            ws,
            {"operation": "flush"},
            {"text": "Second batch.", "contextId": "b"},
            {"operation": "flush"},
            {"text": "Never flushed."},
        )
        events = await receive_events(ws, dones=2)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.6)
        return events

    groups = batches(run(busy_engine, "/ws3?speaker=astra&modelId=arcana&segment=never", script))
    assert [words(g) for g in groups] == [
        ["First", "sentence.", "Still", "first."],
        ["Second", "batch."],
    ]
    assert [g[-1]["contextId"] for g in groups] == ["a", "b"]
    assert {e["contextId"] for e in groups[1]} == {"b"}


def test_immediate_synthesizes_on_receipt_and_joins_what_arrives_while_busy(
    busy_engine: RunningEngine,
) -> None:
    async def script(ws: Any) -> list[Event]:
        await send_all(ws, {"text": "One"}, {"text": "two "}, {"text": "three"})
        await send_all(ws, {"operation": "eos"})
        return await receive_events(ws)

    for path in (
        "/ws3?speaker=astra&modelId=arcana&segment=immediate",
        "/ws3?speaker=astra&modelId=arcana&immediate=true",
    ):
        busy_engine.reset_metrics()
        groups = batches(run(busy_engine, path, script))
        # "One" is synthesized on receipt, "two three" as one utterance once idle; both in the
        # one batch that the eos ends.
        assert [words(g) for g in groups] == [["One", "two", "three"]]
        assert busy_engine.metrics()["completed"] == 2


def test_context_ids_follow_the_most_recent_message_at_request_time(
    busy_engine: RunningEngine,
) -> None:
    async def script(ws: Any) -> list[Event]:
        await send_all(
            ws,
            {"text": "This is the first sentence. "},
            {"text": "This is the second sentence.", "contextId": "uuid-2"},
            {"operation": "eos"},
        )
        return await receive_events(ws)

    groups = batches(run(busy_engine, "/ws3?speaker=cove", script))
    assert [words(g)[-2:] for g in groups] == [["first", "sentence."], ["second", "sentence."]]
    assert [{e.get("contextId") for e in g} for g in groups] == [{None}, {"uuid-2"}]


def test_ws2_done_carries_done_true_and_ws3_does_not(engine: RunningEngine) -> None:
    async def script(ws: Any) -> list[Event]:
        await send_all(ws, {"text": "Hello.", "contextId": "x"})
        return await receive_events(ws, dones=1)

    v2 = run(engine, "/ws2?speaker=cove&modelId=mistv2", script)
    v3 = run(engine, "/ws3?speaker=cove&modelId=mistv2", script)
    assert v2[-1] == {"type": "done", "done": True, "contextId": "x"}
    assert v3[-1] == {"type": "done", "contextId": "x"}
    assert {e["type"] for e in v2} == {"chunk", "timestamps", "done"}


def test_malformed_messages_get_error_events_and_the_connection_stays_open(
    engine: RunningEngine,
) -> None:
    async def script(ws: Any) -> list[Event]:
        await ws.send("this is not json")
        await ws.send(json.dumps(["a", "list"]))
        await ws.send(json.dumps({"operation": "rewind"}))
        await ws.send(json.dumps({"text": 42}))
        await ws.send(json.dumps({"text": "ok", "contextId": 7}))
        await ws.send(json.dumps({"nothing": "useful"}))
        await ws.send(b"\x00binary")
        errors = [json.loads(await ws.recv()) for _ in range(7)]
        await send_all(ws, {"text": "Still here."}, {"operation": "eos"})
        return errors + await receive_events(ws)

    events = run(engine, "/ws3?speaker=cove", script)
    errors, rest = events[:7], events[7:]
    assert all(e["type"] == "error" and e["message"] for e in errors)
    assert words(rest) == ["Still", "here."]
    assert rest[-1]["type"] == "done"


def test_clear_drops_the_buffer(engine: RunningEngine) -> None:
    async def script(ws: Any) -> list[Event]:
        await send_all(ws, {"text": "Forget this"}, {"operation": "clear"}, {"operation": "flush"})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)
        await send_all(ws, {"text": "Keep this"}, {"operation": "eos"})
        return await receive_events(ws)

    groups = batches(run(engine, "/ws3?speaker=cove&segment=never", script))
    assert [words(g) for g in groups] == [["Keep", "this"]]


def test_eos_on_an_empty_buffer_sends_one_done_then_closes(engine: RunningEngine) -> None:
    async def script(ws: Any) -> tuple[list[Event], int | None]:
        await send_all(ws, {"operation": "eos"})
        events = await receive_events(ws)
        return events, ws.close_code

    events, code = run(engine, "/ws3?speaker=cove", script)
    assert events == [{"type": "done", "contextId": None}]
    assert code == 1000


def test_timestamps_sit_inside_the_pcm_of_their_synthesis(engine: RunningEngine) -> None:
    async def script(ws: Any) -> list[Event]:
        await send_all(
            ws, {"text": "Timing is everything. Every word counts."}, {"operation": "eos"}
        )
        return await receive_events(ws)

    [batch] = batches(run(engine, "/ws3?speaker=cove&audioFormat=pcm&samplingRate=16000", script))
    duration = len(audio(batch)) / 2 / 16000
    stamps = [e["word_timestamps"] for e in batch if e["type"] == "timestamps"]
    starts = [s for t in stamps for s in t["start"]]
    ends = [s for t in stamps for s in t["end"]]
    assert all(len(t["words"]) == len(t["start"]) == len(t["end"]) for t in stamps)
    assert starts == sorted(starts) and starts[0] >= 0
    assert all(s <= e for s, e in zip(starts, ends, strict=True))
    assert ends[-1] <= duration + 0.01
    assert ends[-1] > duration * 0.6


def test_mp3_over_ws3_concatenates_into_one_playable_stream(engine: RunningEngine) -> None:
    async def script(ws: Any) -> list[Event]:
        await send_all(ws, {"text": "One sentence. "}, {"text": "Another sentence."})
        await send_all(ws, {"operation": "eos"})
        return await receive_events(ws)

    events = run(engine, "/ws3?speaker=cove&audioFormat=mp3", script)
    data = audio(events)
    assert data[:1] == b"\xff"  # a bare MP3 frame, no ID3 tag
    assert 1.0 < decoded_seconds(data, "mp3") < 6.0


def test_binary_ws_buffers_to_punctuation_and_obeys_commands(engine: RunningEngine) -> None:
    async def script(ws: Any) -> tuple[int, int, int, int | None]:
        await ws.send("Hello there")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)
        await ws.send(" friend, ")  # a comma ends a phrase on /ws
        first = len(await asyncio.wait_for(ws.recv(), 5))
        while True:  # drain the rest of that phrase
            try:
                first += len(await asyncio.wait_for(ws.recv(), 0.5))
            except TimeoutError:
                break
        await ws.send("dropped words")
        await ws.send("<CLEAR>")
        await ws.send("<FLUSH>")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)
        await ws.send("flushed words")
        await ws.send("<FLUSH>")
        flushed = len(await asyncio.wait_for(ws.recv(), 5))
        await ws.send("last words")
        await ws.send("<EOS>")
        rest = 0
        try:
            while True:
                rest += len(await ws.recv())
        except ConnectionClosedOK:
            pass
        return first, flushed, rest, ws.close_code

    first, flushed, rest, code = run(engine, "/ws?speaker=cove&audioFormat=pcm", script)
    assert first > 16000 and flushed > 0 and rest > 0
    assert code == 1000


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ws3?speaker=nobody", 400),
        ("/ws3?speaker=cove&segment=sometimes", 400),
        ("/ws3?speaker=cove&audioFormat=wav", 400),
        ("/ws3?speaker=cove&samplingRate=1000", 400),
        ("/ws3?modelId=arcana&speaker=luna&samplingRate=12000", 400),
        ("/ws2?speaker=luna&modelId=arcana", 400),
        ("/ws?modelId=mistv3", 400),
    ],
)
def test_bad_queries_fail_the_upgrade_with_a_plain_400(
    engine: RunningEngine, path: str, status: int
) -> None:
    async def go() -> None:
        async with websockets.connect(engine.ws_url + path):
            pass

    with pytest.raises(InvalidStatus) as caught:
        asyncio.run(go())
    assert caught.value.response.status_code == status
    assert caught.value.response.body


def test_keys_are_checked_on_the_upgrade(engine_factory: Callable[..., RunningEngine]) -> None:
    locked = engine_factory(api_keys=["ws-key"])

    async def connect(headers: dict[str, str]) -> int:
        try:
            async with websockets.connect(
                locked.ws_url + "/ws3?speaker=cove", additional_headers=headers
            ) as ws:
                await send_all(ws, {"operation": "eos"})
                await receive_events(ws)
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    assert asyncio.run(connect({})) == 401
    assert asyncio.run(connect({"Authorization": "Bearer wrong"})) == 401
    assert asyncio.run(connect({"Authorization": "Bearer ws-key"})) == 101


def test_binary_ws_sends_only_audio_frames(engine: RunningEngine) -> None:
    async def script(ws: Any) -> list[object]:
        await ws.send("Only audio comes back, ")
        await ws.send("never JSON.")
        await ws.send("<EOS>")
        frames: list[object] = []
        try:
            while True:
                frames.append(await ws.recv())
        except ConnectionClosedOK:
            return frames

    frames = run(engine, "/ws?speaker=cove&audioFormat=mulaw&samplingRate=8000", script)
    assert frames and all(isinstance(f, bytes) for f in frames)
    assert sum(len(f) for f in frames if isinstance(f, bytes)) > 8000


def test_metrics_count_each_connection_by_its_voice(
    engine_factory: Callable[..., RunningEngine],
) -> None:
    running = engine_factory()

    async def script(ws: Any) -> list[Event]:
        await send_all(ws, {"operation": "eos"})
        return await receive_events(ws)

    run(running, "/ws3?speaker=luna&modelId=arcana", script)
    run(running, "/ws2?speaker=marsh", script)

    assert running.metrics()["voices"] == {"arcana/luna": 1, "mistv2/marsh": 1}
