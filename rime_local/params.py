"""Synthesis parameters, validated the way Rime does: a plain-text 400 naming the problem.

The HTTP body (JSON values) and WebSocket query strings (all strings) share these rules. What
each model accepts (sampling rates and their default, speed convention, pause markup, SSE, text
length) comes from the engine's own `models`.
Interpretations where Rime's documents are silent:
- `modelId` defaults to `mistv3` (seed 002), except on `/ws2`, the Mist v2 endpoint, where it
  defaults to `mistv2` and other model families are refused.
- `lang` defaults to `eng` and must be the speaker's language.
- `speedAlpha` must be a positive number; it becomes espeak's words-per-minute around 175,
  divided by it on Mist v2 / mist ("lower is faster") and multiplied on the newer models.
- `temperature`, `top_p`, `repetition_penalty` and `noTextNormalization` are checked for type and
  otherwise have no effect on espeak.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from rime_local.catalogue import LANGUAGES, SPEAKERS, Speaker, find_speaker
from rime_local.codecs import Encoding
from rime_local.models import MODELS, ModelFacts
from rime_local.script import MarkupOptions
from rime_local.synthesis import Voicing
from rime_local.voice import DEFAULT_RATE_WPM

DEFAULT_MODEL = "mistv3"


class ParamError(ValueError):
    """A bad request parameter; the message is the plain-text body of the 400."""


@dataclass(frozen=True)
class RequestParams:
    """A validated synthesis request (everything but the text)."""

    model: ModelFacts
    speaker: Speaker
    lang: str
    sampling_rate: int
    speed_alpha: float
    voicing: Voicing


def _bool(name: str, value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "0", "no", ""}:
        return False
    raise ParamError(f"{name} must be true or false")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise ParamError(f"{name} must be a number")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ParamError(f"{name} must be a number") from None
    if not math.isfinite(number):
        raise ParamError(f"{name} must be a finite number")
    return number


def _int(name: str, value: object) -> int:
    number = _number(name, value)
    if number != int(number):
        raise ParamError(f"{name} must be a whole number")
    return int(number)


def parse_inline_speeds(value: object) -> tuple[float, ...]:
    """`inlineSpeedAlpha` as Rime takes it ("3, 0.5") or as a JSON list of numbers."""
    if value is None or value == "":
        return ()
    items: list[object]
    if isinstance(value, str):
        items = [part for part in (p.strip() for p in value.split(",")) if part]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        items = [value]
    speeds = tuple(_number("inlineSpeedAlpha", item) for item in items)
    if any(s <= 0 for s in speeds):
        raise ParamError("inlineSpeedAlpha values must be greater than 0")
    return speeds


def rate_wpm(model: ModelFacts, speed_alpha: float) -> int:
    """espeak's speaking rate for a `speedAlpha` under the model's convention."""
    factor = 1 / speed_alpha if model.speed_lower_is_faster else speed_alpha
    return round(DEFAULT_RATE_WPM * factor)


def validate_text(text: object, model: ModelFacts) -> str:
    """The request text, or a ParamError for a missing, empty or too long one."""
    if text is None:
        raise ParamError("text is required")
    if not isinstance(text, str):
        raise ParamError("text must be a string")
    if not text.strip():
        raise ParamError("text must not be empty")
    if len(text) > model.max_chars:
        raise ParamError(
            f"text is {len(text)} characters long; the limit is {model.max_chars} characters"
        )
    return text


def parse_params(
    raw: Mapping[str, object],
    *,
    default_model: str = DEFAULT_MODEL,
    allowed_models: frozenset[str] | None = None,
) -> RequestParams:
    """Validate synthesis parameters (HTTP body or WebSocket query)."""
    model_id = raw.get("modelId") or default_model
    if not isinstance(model_id, str) or model_id not in MODELS:
        raise ParamError(f"unknown modelId {model_id!r}; known: {', '.join(sorted(MODELS))}")
    if allowed_models is not None and model_id not in allowed_models:
        allowed = ", ".join(sorted(allowed_models))
        raise ParamError(f"modelId {model_id!r} is not served here; use one of {allowed}")
    model = MODELS[model_id]

    name = raw.get("speaker")
    if name is None or name == "":
        raise ParamError("speaker is required")
    speaker = find_speaker(model_id, str(name))
    if speaker is None:
        some = ", ".join(SPEAKERS[model_id][:6])
        raise ParamError(f"unknown speaker {name!r} for modelId {model_id!r} (e.g. {some})")

    lang = raw.get("lang") or "eng"
    if lang not in LANGUAGES:
        raise ParamError(f"unknown lang {lang!r}; known: {', '.join(sorted(LANGUAGES))}")
    if lang != speaker.lang:
        raise ParamError(f"speaker {speaker.name!r} speaks {speaker.lang!r}, not {lang!r}")

    rate_value = raw.get("samplingRate")
    rate = (
        model.default_sampling_rate
        if rate_value in (None, "")
        else _int("samplingRate", rate_value)
    )
    if not model.accepts_rate(rate):
        raise ParamError(f"samplingRate must be {model.describe_rates()} for {model_id}")

    alpha_value = raw.get("speedAlpha")
    speed_alpha = 1.0 if alpha_value in (None, "") else _number("speedAlpha", alpha_value)
    if speed_alpha <= 0:
        raise ParamError("speedAlpha must be greater than 0")

    for knob in ("temperature", "top_p", "repetition_penalty"):
        if raw.get(knob) not in (None, ""):
            _number(knob, raw.get(knob))
    _bool("noTextNormalization", raw.get("noTextNormalization"))

    markup = MarkupOptions(
        pauses=_bool("pauseBetweenBrackets", raw.get("pauseBetweenBrackets"))
        and model.honours_pause_markup,
        phonemes=_bool("phonemizeBetweenBrackets", raw.get("phonemizeBetweenBrackets")),
        inline_speeds=parse_inline_speeds(raw.get("inlineSpeedAlpha")),
    )
    voicing = Voicing(speaker.espeak_voice(), rate_wpm(model, speed_alpha), rate, markup)
    return RequestParams(model, speaker, str(lang), rate, speed_alpha, voicing)


WS_AUDIO_FORMATS = {"mp3": Encoding.MP3, "mulaw": Encoding.MULAW, "pcm": Encoding.PCM}


def parse_ws_format(value: object) -> Encoding:
    """`audioFormat` of a WebSocket query: mp3, mulaw or pcm; pcm when absent."""
    if value in (None, ""):
        return Encoding.PCM
    try:
        return WS_AUDIO_FORMATS[str(value)]
    except KeyError:
        raise ParamError("audioFormat must be one of mp3, mulaw, pcm") from None


def message_markup(message: Mapping[str, object], base: MarkupOptions) -> MarkupOptions:
    """A WebSocket text message's markup: its own `inlineSpeedAlpha` and
    `phonemizeBetweenBrackets`, where it sends them, over the connection's `base`."""
    options = base
    if message.get("phonemizeBetweenBrackets") is not None:
        phonemes = _bool("phonemizeBetweenBrackets", message["phonemizeBetweenBrackets"])
        options = replace(options, phonemes=phonemes)
    if message.get("inlineSpeedAlpha") not in (None, ""):
        speeds = parse_inline_speeds(message["inlineSpeedAlpha"])
        options = replace(options, inline_speeds=speeds)
    return options
