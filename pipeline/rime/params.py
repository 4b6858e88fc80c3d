"""Typed request parameters for Rime, checked against the model's facts before anything is sent.

`VoiceParams` is the one set of synthesis parameters in the project: the plan stores it per
script (its fields, by these names, are part of every segment's cache key), the HTTP body and
the WebSocket query string are written from it. `TtsRequest` adds the text of one request.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum

from pipeline.rime.errors import InvalidRequest
from pipeline.rime.languages import canonical_lang
from pipeline.rime.models import DEFAULT_MAX_CHARS, MODELS, ModelInfo

# `[word]` groups that `inlineSpeedAlpha` applies to, in order.
_INLINE_SPEED_GROUP = re.compile(r"\[[^\[\]]*\]")


class AudioFormat(StrEnum):
    """Audio encodings Rime streams; the value is our short name."""

    MP3 = "mp3"
    WAV = "wav"
    PCM = "pcm"  # 16-bit little-endian mono, no header
    MULAW = "mulaw"  # G.711 mu-law, 8 bits per sample, no header
    OGG_OPUS = "ogg"
    WEBM_OPUS = "webm"

    @property
    def accept(self) -> str:
        """The `Accept` header that asks Rime's HTTP API for this format."""
        return _ACCEPT[self]

    @property
    def ws_name(self) -> str | None:
        """The WebSocket `audioFormat` value, or None when WebSockets don't offer it."""
        return _WS_NAMES.get(self)


_ACCEPT = {
    AudioFormat.MP3: "audio/mp3",
    AudioFormat.WAV: "audio/wav",
    AudioFormat.PCM: "audio/pcm",
    AudioFormat.MULAW: "audio/x-mulaw",
    AudioFormat.OGG_OPUS: "audio/ogg;codecs=opus",
    AudioFormat.WEBM_OPUS: "audio/webm;codecs=opus",
}
_WS_NAMES = {AudioFormat.MP3: "mp3", AudioFormat.MULAW: "mulaw", AudioFormat.PCM: "pcm"}


class Segmenting(StrEnum):
    """When a JSON WebSocket synthesizes the text it has buffered (Rime's `segment`)."""

    BY_SENTENCE = "bySentence"  # Rime's default: at sentence-ending punctuation, by heuristics
    NEVER = "never"  # only on flush or eos; what a batch client wants
    IMMEDIATE = "immediate"  # on every message received while idle


def _number(value: float) -> str:
    """A float as Rime's docs write it: `3` rather than `3.0`, full precision otherwise."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidRequest(message)


def _positive(value: float | None) -> bool:
    return value is None or (math.isfinite(value) and value > 0)


@dataclass(frozen=True)
class VoiceParams:
    """Who speaks and how: every synthesis argument except the text."""

    speaker: str
    model_id: str
    lang: str | None = None  # None leaves Rime's default, "eng"; kept as the three-letter code
    sampling_rate: int | None = None  # None leaves the model's default
    speed_alpha: float | None = None  # in the model's own convention (see ModelInfo.speed_alpha)
    pause_between_brackets: bool = False
    phonemize_between_brackets: bool = False
    no_text_normalization: bool = False  # mist and mistv2 only
    temperature: float | None = None  # arcana only, like top_p and repetition_penalty
    top_p: float | None = None
    repetition_penalty: float | None = None

    def __post_init__(self) -> None:
        _require(bool(self.speaker.strip()), "speaker is required")
        _require(bool(self.model_id.strip()), "modelId is required")
        if self.lang is not None:
            # Either of Rime's spellings; the three-letter one is sent and is in the cache key.
            model = self.model
            code = model.language(self.lang) if model else canonical_lang(self.lang)
            _require(code is not None, f"lang {self.lang!r} is not one {self.model_id} speaks")
            object.__setattr__(self, "lang", code)
        if self.sampling_rate is not None:
            model = self.model
            if model is not None:
                _require(
                    model.accepts_rate(self.sampling_rate),
                    f"samplingRate {self.sampling_rate} is not accepted by {model.id}: "
                    f"must be {model.describe_rates()}",
                )
            else:
                _require(self.sampling_rate > 0, "samplingRate must be positive")
        _require(_positive(self.speed_alpha), "speedAlpha must be a positive number")
        _require(
            self.temperature is None or (math.isfinite(self.temperature) and self.temperature >= 0),
            "temperature must be 0 or more",
        )
        _require(
            self.top_p is None or (math.isfinite(self.top_p) and 0 < self.top_p <= 1),
            "top_p must be in (0, 1]",
        )
        _require(_positive(self.repetition_penalty), "repetition_penalty must be positive")

    @property
    def model(self) -> ModelInfo | None:
        """The model's facts, or None for a model this project doesn't know yet."""
        return MODELS.get(self.model_id)

    @property
    def effective_sampling_rate(self) -> int:
        """The rate the audio comes back at: the one asked for, else the model's default."""
        if self.sampling_rate is not None:
            return self.sampling_rate
        model = self.model
        if model is None:
            raise InvalidRequest(f"samplingRate is required for the unknown model {self.model_id}")
        return model.default_sampling_rate

    @property
    def max_chars(self) -> int:
        """The most characters one request may carry with this model."""
        model = self.model
        return model.max_chars if model is not None else DEFAULT_MAX_CHARS

    def to_json(self) -> dict[str, str | int | float | bool]:
        """Rime's names for the set fields; false flags are left out (false is Rime's default)."""
        body: dict[str, str | int | float | bool] = {
            "speaker": self.speaker,
            "modelId": self.model_id,
        }
        optional: dict[str, str | int | float | bool | None] = {
            "lang": self.lang,
            "samplingRate": self.sampling_rate,
            "speedAlpha": self.speed_alpha,
            "pauseBetweenBrackets": self.pause_between_brackets or None,
            "phonemizeBetweenBrackets": self.phonemize_between_brackets or None,
            "noTextNormalization": self.no_text_normalization or None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body

    def to_query(
        self, audio_format: AudioFormat, segment: Segmenting | None = None
    ) -> dict[str, str]:
        """WebSocket query parameters: the set fields as strings, plus audioFormat and segment."""
        ws_name = audio_format.ws_name
        _require(ws_name is not None, f"WebSockets do not stream {audio_format.value} audio")
        assert ws_name is not None
        query: dict[str, str] = {}
        for key, value in self.to_json().items():
            if isinstance(value, bool):
                query[key] = "true" if value else "false"
            elif isinstance(value, float):
                query[key] = _number(value)
            else:
                query[key] = str(value)
        query["audioFormat"] = ws_name
        if segment is not None:
            query["segment"] = segment.value
        return query


@dataclass(frozen=True)
class TtsRequest:
    """One HTTP synthesis: text, voice and the speeds of its `[word]` groups."""

    text: str
    voice: VoiceParams
    inline_speed_alpha: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _require(bool(self.text.strip()), "text is required")
        limit = self.voice.max_chars
        _require(
            len(self.text) <= limit,
            f"text is {len(self.text)} characters; {self.voice.model_id} takes at most {limit}",
        )
        _require(
            all(_positive(s) for s in self.inline_speed_alpha),
            "inlineSpeedAlpha values must be positive numbers",
        )
        if self.inline_speed_alpha:
            groups = len(_INLINE_SPEED_GROUP.findall(self.text))
            _require(
                groups == len(self.inline_speed_alpha),
                f"inlineSpeedAlpha has {len(self.inline_speed_alpha)} values "
                f"for {groups} [bracketed] words",
            )

    @property
    def inline_speed_alpha_text(self) -> str | None:
        """`inlineSpeedAlpha` the way Rime takes it ("3, 0.5"), or None when unset."""
        if not self.inline_speed_alpha:
            return None
        return ", ".join(_number(s) for s in self.inline_speed_alpha)

    def to_json(self) -> dict[str, str | int | float | bool]:
        """The JSON body of `POST /v1/rime-tts`, with only the set fields."""
        body: dict[str, str | int | float | bool] = {"text": self.text}
        body.update(self.voice.to_json())
        inline = self.inline_speed_alpha_text
        if inline is not None:
            body["inlineSpeedAlpha"] = inline
        return body
