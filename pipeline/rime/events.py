"""The events a Rime JSON WebSocket (`/ws2`, `/ws3`) sends, typed, and the parser for them."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from pipeline.rime import errors


@dataclass(frozen=True)
class WordTimestamp:
    """One word and when it is spoken, in seconds from the start of its utterance."""

    word: str
    start: float
    end: float


@dataclass(frozen=True)
class Chunk:
    """Audio bytes, in the connection's audio format."""

    audio: bytes
    context_id: str | None


@dataclass(frozen=True)
class Timestamps:
    """Word timings, in seconds, as the server sent them; the three tuples are index-aligned."""

    words: tuple[str, ...]
    start: tuple[float, ...]
    end: tuple[float, ...]
    context_id: str | None

    def items(self) -> list[WordTimestamp]:
        """The timings as one record per word."""
        triples = zip(self.words, self.start, self.end, strict=True)
        return [WordTimestamp(w, s, e) for w, s, e in triples]


@dataclass(frozen=True)
class Done:
    """The last chunk of a synthesis batch has been sent (see `utterance` for what that means)."""

    context_id: str | None


@dataclass(frozen=True)
class ErrorEvent:
    """The server refused a message; the connection stays open."""

    message: str
    # The context the server tagged it with; None when it named none (as Rime's cloud may).
    context_id: str | None = None


Event = Chunk | Timestamps | Done | ErrorEvent


def _floats(value: object) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise errors.ProtocolError("timestamps event has a non-numeric time list")
    return tuple(float(v) for v in value)


def parse_event(raw: str | bytes, secret: str | None = None) -> Event | None:
    """The typed event for one server message; None for an event type this client ignores.

    An error event's message is cleaned of `secret`, the key the connection was opened with.
    """
    if isinstance(raw, bytes):
        raise errors.ProtocolError("binary message on a JSON WebSocket")
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise errors.ProtocolError(f"message is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise errors.ProtocolError("message is not a JSON object")
    kind = message.get("type")
    context_id = message.get("contextId")
    if context_id is not None and not isinstance(context_id, str):
        context_id = str(context_id)
    if kind == "chunk":
        data = message.get("data")
        if not isinstance(data, str):
            raise errors.ProtocolError("chunk event without base64 data")
        try:
            audio = base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise errors.StreamCut(f"chunk data is not valid base64: {exc}") from exc
        return Chunk(audio, context_id)
    if kind == "timestamps":
        stamps = message.get("word_timestamps")
        if not isinstance(stamps, dict):
            raise errors.ProtocolError("timestamps event without word_timestamps")
        words = stamps.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise errors.ProtocolError("timestamps event has a non-text word list")
        start, end = _floats(stamps.get("start")), _floats(stamps.get("end"))
        if not len(words) == len(start) == len(end):
            raise errors.ProtocolError("timestamps lists differ in length")
        return Timestamps(tuple(words), start, end, context_id)
    if kind == "done":
        return Done(context_id)
    if kind == "error":
        text = errors.clean_message(str(message.get("message", "")), secret)
        return ErrorEvent(text, context_id)
    return None
