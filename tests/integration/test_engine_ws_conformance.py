"""/ws3 as clients of Rime read it, over real sockets: done, timestamps, errors, context ids.

Written from the seeds' wording (001: "After the last audio chunk for a synthesis batch has been
sent, the server emits a done event"; timestamps "measured from the beginning of the audio for
the current synthesis"; 004 on how each `segment` mode queues) and from how voice-agent
frameworks read the events: `done` as "everything sent before this point is spoken", and word
times either as they come or added to the previous event's last end.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosedOK

from rime_local.config import EngineConfig
from rime_local.server import RunningEngine, start_in_thread

Event = dict[str, Any]
RATE = 22050
QUERY = f"speaker=cove&audioFormat=pcm&samplingRate={RATE}"
SENTENCES = [
    "The weather today is sunny. ",
    "Temperatures will reach the mid-seventies. ",
    "Enjoy the sunshine!",
]
MODES = ["never", "bySentence", "immediate"]
# Between the engine's own render of a text and the same text over /ws3 in pieces: each
# sentence is its own espeak call either way, so they differ by a few samples at most.
SECONDS_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def busy() -> Iterator[RunningEngine]:
    """Every synthesis waits 150 ms before its first byte: messages sent together land while
    the first one is being synthesized, as they do at Rime when text arrives in a burst."""
    running = start_in_thread(EngineConfig(ttfb_ms=150))
    try:
        yield running
    finally:
        running.stop()


def talk(engine: RunningEngine, query: str, script: Callable[[Any], Any]) -> Any:
    """Run `script(ws)` on a /ws3 connection to `engine`."""

    async def go() -> Any:
        async with websockets.connect(f"{engine.ws_url}/ws3?{query}") as ws:
            return await script(ws)

    return asyncio.run(go())


async def send(ws: Any, *messages: Event) -> None:
    """Send the messages back to back (within a millisecond on loopback)."""
    for message in messages:
        await ws.send(json.dumps(message))


async def receive(ws: Any, dones: int, quiet: float = 0.4, timeout: float = 15) -> list[Event]:
    """Events until `dones` done events have come, then whatever follows within `quiet` s."""
    events: list[Event] = []
    try:
        while sum(e["type"] == "done" for e in events) < dones:
            events.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
        while True:
            events.append(json.loads(await asyncio.wait_for(ws.recv(), quiet)))
    except (TimeoutError, ConnectionClosedOK):
        return events


def pcm(events: list[Event]) -> bytes:
    return b"".join(base64.b64decode(e["data"]) for e in events if e["type"] == "chunk")


def seconds(audio: bytes) -> float:
    return len(audio) / 2 / RATE


def render(engine: RunningEngine, text: str, **options: object) -> float:
    """Seconds of the engine's own render of `text` over HTTP, the reference length."""
    body = {"text": text, "speaker": "cove", "samplingRate": RATE, **options}
    response = httpx.post(engine.http_url, json=body, headers={"Accept": "audio/pcm"}, timeout=30)
    response.raise_for_status()
    return seconds(response.content)


def utterances(events: list[Event]) -> list[list[Event]]:
    """Events grouped per done (each group ends with its done)."""
    groups: list[list[Event]] = [[]]
    for event in events:
        groups[-1].append(event)
        if event["type"] == "done":
            groups.append([])
    return [g for g in groups if g]


def stamps(group: list[Event]) -> list[Event]:
    return [e for e in group if e["type"] == "timestamps"]


def spoken(group: list[Event]) -> list[str]:
    return [w for e in stamps(group) for w in e["word_timestamps"]["words"]]


def text_words(text: str) -> list[str]:
    return text.split()


# Bursts of text, then a flush.


@pytest.mark.parametrize("mode", MODES)
def test_a_burst_of_sentences_and_a_flush_is_one_done_after_all_of_the_audio(
    busy: RunningEngine, mode: str
) -> None:
    async def script(ws: Any) -> list[Event]:
        await send(ws, *({"text": s, "contextId": "turn"} for s in SENTENCES))
        await send(ws, {"operation": "flush"})
        return await receive(ws, dones=1, quiet=0.6)

    busy.reset_metrics()
    events = talk(busy, f"{QUERY}&segment={mode}", script)
    syntheses = busy.metrics()["completed"]
    text = "".join(SENTENCES)
    kinds = [e["type"] for e in events]
    assert kinds.count("done") == 1 and kinds[-1] == "done"
    # One timestamps event, after the last chunk and before the done.
    assert kinds.count("timestamps") == 1 and kinds[-2] == "timestamps"
    assert all(e["contextId"] == "turn" for e in events)
    assert spoken(events) == text_words(text)
    assert seconds(pcm(events)) == pytest.approx(render(busy, text), abs=SECONDS_TOLERANCE)
    # Under bySentence and immediate the first sentence went to synthesis alone (it arrived
    # while the engine was idle); that is two syntheses, still one batch and one done.
    assert syntheses == (1 if mode == "never" else 2)


@pytest.mark.parametrize("mode", ["bySentence", "immediate"])
def test_without_a_flush_done_comes_once_nothing_synthesizable_is_left(
    busy: RunningEngine, mode: str
) -> None:
    async def script(ws: Any) -> list[Event]:
        await send(ws, *({"text": s} for s in SENTENCES[:2]))
        return await receive(ws, dones=1, quiet=0.6)

    events = talk(busy, f"{QUERY}&segment={mode}", script)
    assert [e["type"] for e in events].count("done") == 1
    assert spoken(events) == text_words("".join(SENTENCES[:2]))


# Several utterances on one connection.


@dataclass
class Turn:
    context_id: str
    sentences: list[str]

    @property
    def text(self) -> str:
        return "".join(self.sentences)


TURNS = [
    Turn("turn-1", ["Good morning. ", "How can I help you today? "]),
    Turn("turn-2", ["Your parcel left the depot at nine. ", "It should arrive by noon. "]),
    Turn("turn-3", ["Anything else? "]),
]


async def _one_at_a_time(ws: Any) -> list[Event]:
    events: list[Event] = []
    for turn in TURNS:
        await send(ws, *({"text": s, "contextId": turn.context_id} for s in turn.sentences))
        await send(ws, {"operation": "flush"})
        events += await receive(ws, dones=1, quiet=0.05)
    return events


async def _all_at_once(ws: Any) -> list[Event]:
    for turn in TURNS:
        await send(ws, *({"text": s, "contextId": turn.context_id} for s in turn.sentences))
        await send(ws, {"operation": "flush"})
    return await receive(ws, dones=len(TURNS), quiet=0.6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("script", [_one_at_a_time, _all_at_once], ids=["waiting", "burst"])
def test_utterances_on_one_connection_each_end_in_their_own_done_and_context(
    busy: RunningEngine, mode: str, script: Callable[[Any], Any]
) -> None:
    events = talk(busy, f"{QUERY}&segment={mode}", script)
    groups = utterances(events)
    assert len(groups) == len(TURNS)
    for group, turn in zip(groups, TURNS, strict=True):
        # Every chunk, timestamps and done of an utterance carries its id, and none of its
        # audio comes after its done (nor any of the next one's before it).
        assert {e["contextId"] for e in group} == {turn.context_id}
        assert [e["type"] for e in group].count("timestamps") == 1
        assert spoken(group) == text_words(turn.text)
        assert seconds(pcm(group)) == pytest.approx(render(busy, turn.text), abs=SECONDS_TOLERANCE)


# Clear.


@pytest.mark.parametrize("mode", ["never", "bySentence"])
def test_clear_in_the_middle_of_a_queued_batch_speaks_none_of_it_and_sends_no_done(
    engine_factory: Callable[..., RunningEngine], mode: str
) -> None:
    # Paced at twice real time, so the clear surely lands while the first sentence plays.
    paced = engine_factory(pacing=2.0)

    async def script(ws: Any) -> list[Event]:
        await send(ws, *({"text": s, "contextId": "interrupted"} for s in SENTENCES))
        await send(
            ws,
            {"operation": "flush"},
            {"text": "And this was queued behind it.", "contextId": "queued"},
            {"operation": "flush"},
        )
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await send(ws, {"operation": "clear"})
        await send(ws, {"text": "Kept.", "contextId": "after"}, {"operation": "flush"})
        return [first, *await receive(ws, dones=1, quiet=0.6)]

    events = talk(paced, f"{QUERY}&segment={mode}", script)
    metrics = paced.metrics()
    contexts = [e["contextId"] for e in events]
    assert "queued" not in contexts
    cut = [e for e in events if e["contextId"] == "interrupted"]
    assert cut and all(e["type"] == "chunk" for e in cut)  # no timestamps, no done
    # Nothing of the cleared batch after the first event of the next one.
    first_after = contexts.index("after")
    assert "interrupted" not in contexts[first_after:]
    kept = events[first_after:]
    assert [e["type"] for e in events].count("done") == 1 and kept[-1]["type"] == "done"
    assert spoken(kept) == ["Kept."]
    assert seconds(pcm(kept)) == pytest.approx(render(paced, "Kept."), abs=SECONDS_TOLERANCE)
    # The first sentence (under never, the whole first flush) began; the text queued behind
    # it never reached synthesis; "Kept." did.
    begun = SENTENCES[0].rstrip() if mode == "bySentence" else "".join(SENTENCES)
    assert metrics["audio_started"] == 2
    assert metrics["billed_characters"] == len(begun) + len("Kept.")


# Timestamps, as two kinds of client read them.


@dataclass
class Reader:
    """Word times per utterance as a client builds them from the events it receives."""

    cumulative: bool  # add the previous event's last end of the same utterance to each event
    offset: float = 0.0
    words: list[list[tuple[str, float, float]]] = field(default_factory=lambda: [[]])
    audio: list[float] = field(default_factory=lambda: [0.0])

    def read(self, event: Event) -> None:
        if event["type"] == "chunk":
            self.audio[-1] += seconds(base64.b64decode(event["data"]))
        elif event["type"] == "timestamps":
            stamp = event["word_timestamps"]
            triples = zip(stamp["words"], stamp["start"], stamp["end"], strict=True)
            self.words[-1] += [(w, s + self.offset, e + self.offset) for w, s, e in triples]
            if self.cumulative and stamp["end"]:
                self.offset += stamp["end"][-1]
        elif event["type"] == "done":
            # The utterance is over; the next one starts from zero (a new context).
            self.words.append([])
            self.audio.append(0.0)
            self.offset = 0.0


@pytest.mark.parametrize("mode", MODES)
def test_both_readings_of_timestamps_give_increasing_times_inside_the_audio(
    busy: RunningEngine, mode: str
) -> None:
    events = talk(busy, f"{QUERY}&segment={mode}", _one_at_a_time)
    readers = [Reader(cumulative=True), Reader(cumulative=False)]
    for event in events:
        for reader in readers:
            reader.read(event)
    for reader in readers:
        assert len(reader.words) == len(TURNS) + 1 and reader.words[-1] == []
        for words, duration in zip(reader.words, reader.audio, strict=True):
            if not words:
                continue
            previous_end = 0.0
            for _, start, end in words:
                assert previous_end - 1e-6 <= start <= end <= duration + 0.01
                previous_end = end
            # The last word ends with the speech, not partway through it.
            assert words[-1][2] > 0.75 * duration
    assert readers[0].words == readers[1].words


# Errors.


def test_error_events_carry_the_context_id_in_force(engine: RunningEngine) -> None:
    async def script(ws: Any) -> list[Event]:
        await ws.send("not json at all")
        await send(ws, {"text": "Held in the buffer ", "contextId": "ctx-a"})
        await ws.send("{broken")
        await send(ws, {"operation": "rewind"})
        await send(ws, {"operation": "rewind", "contextId": "ctx-b"})
        await send(ws, {"text": "Refused.", "contextId": "ctx-c", "inlineSpeedAlpha": "fast"})
        await send(ws, {"text": "Refused too.", "phonemizeBetweenBrackets": "maybe"})
        await ws.send(b"\x00binary")
        errors = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(7)]
        await send(ws, {"operation": "eos"})
        return errors + await receive(ws, dones=1)

    events = talk(engine, "speaker=cove&segment=never", script)
    errors, rest = events[:7], events[7:]
    assert all(e["type"] == "error" and e["message"] for e in errors)
    assert [e["contextId"] for e in errors] == [
        None,  # nothing was in force yet (the key is there, null)
        "ctx-a",
        "ctx-a",
        "ctx-b",  # a refused message that names its context is answered in it
        "ctx-c",
        "ctx-a",
        "ctx-a",
    ]
    assert all("contextId" in e for e in errors)
    # The refused texts were not buffered; the context in force did not move.
    assert spoken(rest) == ["Held", "in", "the", "buffer"]
    assert {e["contextId"] for e in rest} == {"ctx-a"}


# Per-message options.


def _batch(engine: RunningEngine, *messages: Event, query: str = QUERY) -> list[Event]:
    async def script(ws: Any) -> list[Event]:
        await send(ws, *messages, {"operation": "flush"})
        return await receive(ws, dones=1, quiet=0.05)

    return talk(engine, f"{query}&segment=never", script)


def test_a_message_s_own_inline_speeds_apply_to_its_own_bracketed_words(
    engine: RunningEngine,
) -> None:
    slow = _batch(engine, {"text": "This is [slowly] said.", "inlineSpeedAlpha": "3"})
    plain = _batch(engine, {"text": "This is [slowly] said."})
    assert seconds(pcm(slow)) == pytest.approx(
        render(engine, "This is [slowly] said.", inlineSpeedAlpha="3"), abs=SECONDS_TOLERANCE
    )
    assert seconds(pcm(slow)) > seconds(pcm(plain)) + 0.3
    # Two messages in one batch, each with its own list: the second message's first value goes
    # to its own first bracketed word, as one request with both lists joined would do.
    mixed = _batch(
        engine,
        {"text": "Say [one] now. ", "inlineSpeedAlpha": "3"},
        {"text": "Then [two] later.", "inlineSpeedAlpha": "0.5"},
        {"text": " And [three] plain."},
    )
    joined = render(
        engine, "Say [one] now. Then [two] later. And [three] plain.", inlineSpeedAlpha="3, 0.5"
    )
    assert seconds(pcm(mixed)) == pytest.approx(joined, abs=SECONDS_TOLERANCE)
    assert spoken(mixed) == [
        "Say",
        "one",
        "now.",
        "Then",
        "two",
        "later.",
        "And",
        "three",
        "plain.",
    ]


def test_a_message_s_own_phonemize_switch_applies_to_its_own_text(engine: RunningEngine) -> None:
    text = "Say {h'El.o} now."
    phonemes = _batch(engine, {"text": text, "phonemizeBetweenBrackets": True})
    letters = _batch(engine, {"text": text})
    assert pcm(phonemes) != pcm(letters)
    assert seconds(pcm(phonemes)) == pytest.approx(
        render(engine, text, phonemizeBetweenBrackets=True), abs=SECONDS_TOLERANCE
    )
    assert seconds(pcm(letters)) == pytest.approx(render(engine, text), abs=SECONDS_TOLERANCE)
    # One batch, the switch on for the first message only: each sentence sounds as it would
    # alone with its own setting.
    both = _batch(
        engine,
        {"text": "Say {h'El.o} now. ", "phonemizeBetweenBrackets": "true"},
        {"text": "Say {h'El.o} again."},
    )
    expected = render(engine, "Say {h'El.o} now.", phonemizeBetweenBrackets=True) + render(
        engine, "Say {h'El.o} again."
    )
    assert seconds(pcm(both)) == pytest.approx(expected, abs=SECONDS_TOLERANCE)
    assert [e["type"] for e in both].count("done") == 1


# Any split of a text into messages and flushes.

_WORDS = ["Hello", "there.", "This", "is", "a", "test", "of", "the", "engine.", "Bye!"]


@st.composite
def _sessions(draw: st.DrawFn) -> list[Event]:
    """Messages of random sizes, random context ids and random flushes, ending in a flush."""
    messages: list[Event] = []
    words = draw(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=14))
    i = 0
    while i < len(words):
        size = draw(st.integers(1, 4))
        text = "".join(f"{w} " for w in words[i : i + size])
        context = draw(st.sampled_from([None, "a", "b"]))
        messages.append({"text": text, "contextId": context})
        i += size
        for _ in range(draw(st.integers(0, 2))):
            messages.append({"operation": "flush"})
    messages.append({"operation": "flush"})
    return messages


def _expected(messages: list[Event]) -> list[tuple[list[str], str | None]]:
    """Per non-empty flush: the words it flushed and the context id in force at the flush."""
    out: list[tuple[list[str], str | None]] = []
    buffer = ""
    context: str | None = None
    for message in messages:
        if "text" in message:
            buffer += message["text"]
            context = message["contextId"]
        elif buffer.strip():
            out.append((buffer.split(), context))
            buffer = ""
    return out


@settings(max_examples=15, deadline=None)
@given(messages=_sessions())
def test_under_never_each_non_empty_flush_is_one_done_after_its_audio(
    engine: RunningEngine, messages: list[Event]
) -> None:
    expected = _expected(messages)

    async def script(ws: Any) -> list[Event]:
        await send(ws, *messages)
        return await receive(ws, dones=len(expected), quiet=0.3)

    events = talk(engine, f"{QUERY}&segment=never", script)
    groups = utterances(events)
    assert len(groups) == len(expected)  # nothing after the last expected done either
    for group, (words, context) in zip(groups, expected, strict=True):
        assert spoken(group) == words
        assert {e["contextId"] for e in group} == {context}
        # All of the batch's audio came before its done: its words end inside it.
        ends = [t for e in stamps(group) for t in e["word_timestamps"]["end"]]
        assert ends[-1] <= seconds(pcm(group)) + 0.01
