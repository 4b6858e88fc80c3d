"""Synthesis parameters, validated the way Rime does: a plain-text 400 naming the problem.

The HTTP body (JSON values) and WebSocket query strings (all strings) share these rules. What
each model accepts (sampling rates and their default, speed convention, pause markup, SSE, text
length, `timeScaleFactor`) comes from the engine's own `models`; who speaks which language, from
its `catalogue`; the spellings of `lang`, from `languages`.
Interpretations where Rime's documents are silent:
- `modelId` defaults to `mistv3` (seed 002), except on `/ws2`, the Mist v2 endpoint, where it
  defaults to `mistv2` and other model families are refused.
- `lang` takes either of Rime's spellings (`eng` or `en`, `spa` or `es`, ...) and must be a
  language the speaker is filed under. Without it, the default is `eng` (seeds 001-003) for a
  voice that speaks English, and the voice's own language for one that doesn't: the documents
  make `lang` match the speaker only "if provided". Rime's later pages wrote `language` in some
  examples and corrected them to `lang`; `language` is no parameter, and like every name the
  engine doesn't know it is ignored.
- `speedAlpha` must be a positive number; it becomes espeak's words-per-minute around 175,
  divided by it on Mist v2 / mist ("lower is faster") and multiplied on the newer models.
- `timeScaleFactor` (a number from 0.4 to 2.5, "A value above 1.0 slows down the audio, a value
  below 1.0 speeds up the audio") stretches the audio to that many times its duration, at the
  same pitch, on the models Rime documents it for (Coda, Arcana, Mist v3), over HTTP and
  WebSockets alike ("works over both HTTP and WebSocket endpoints", Rime's Playback speed page,
  August 2026). Rime clamps a value outside the range without an error; the engine refuses it,
  so a client learns of a value Rime would silently change. On Mist and Mist v2 it is checked
  and has no effect.
- Accepted, checked for type, and without effect on espeak: `temperature`, `top_p`,
  `repetition_penalty` and `noTextNormalization`; `reduceLatency` (true or false: the earlier
  name of `noTextNormalization`, and espeak always normalizes text); `saveOovs` (true or false:
  it logged out-of-vocabulary words to Rime's Speech QA dashboard, since retired, and is still
  accepted "for backward compatibility"); `max_tokens` (a whole number from 200 to 5000, Arcana's
  documented range: it capped the tokens Arcana generated, and espeak generates none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from rime_local.catalogue import SPEAKERS, Speaker, find_speaker
from rime_local.codecs import Encoding
from rime_local.languages import find_language, known_spellings
from rime_local.models import MODELS, TIME_SCALE_RANGE, ModelFacts
from rime_local.script import MarkupOptions
from rime_local.synthesis import Voicing
from rime_local.voice import DEFAULT_RATE_WPM

DEFAULT_MODEL = "mistv3"

# Arcana's `max_tokens`: "The max tokens. Range is 200 to 5000" (its HTTP reference until March
# 2026, when the sampling parameters left it).
MAX_TOKENS_RANGE = (200, 5000)


class ParamError(ValueError):
    """A bad request parameter; the message is the plain-text body of the 400."""


@dataclass(frozen=True)
class RequestParams:
    """A validated synthesis request (everything but the text)."""

    model: ModelFacts
    speaker: Speaker
    lang: str  # Rime's three-letter code, whichever spelling the request used
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

    lang = parse_lang(raw.get("lang"), speaker)

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

    time_scale = parse_time_scale(raw.get("timeScaleFactor"))
    check_no_ops(raw)

    markup = MarkupOptions(
        pauses=_bool("pauseBetweenBrackets", raw.get("pauseBetweenBrackets"))
        and model.honours_pause_markup,
        phonemes=_bool("phonemizeBetweenBrackets", raw.get("phonemizeBetweenBrackets")),
        inline_speeds=parse_inline_speeds(raw.get("inlineSpeedAlpha")),
    )
    voicing = Voicing(
        speaker.espeak_voice(lang),
        rate_wpm(model, speed_alpha),
        rate,
        markup,
        time_scale if model.honours_time_scale else 1.0,
    )
    return RequestParams(model, speaker, lang, rate, speed_alpha, voicing)


def parse_lang(value: object, speaker: Speaker) -> str:
    """`lang` as Rime's three-letter code, which `speaker` must speak; its own when absent."""
    if value in (None, ""):
        return speaker.default_lang
    language = find_language(value) if isinstance(value, str) else None
    if language is None:
        raise ParamError(f"unknown lang {value!r}; known: {known_spellings()}")
    if not speaker.speaks(language.code):
        spoken = " and ".join(repr(code) for code in speaker.languages)
        raise ParamError(f"speaker {speaker.name!r} speaks {spoken}, not {value!r}")
    return language.code


def parse_time_scale(value: object) -> float:
    """`timeScaleFactor`: 1.0 when absent, else a number within Rime's range."""
    if value in (None, ""):
        return 1.0
    factor = _number("timeScaleFactor", value)
    lo, hi = TIME_SCALE_RANGE
    if not lo <= factor <= hi:
        raise ParamError(f"timeScaleFactor must be between {lo} and {hi}")
    return factor


def check_no_ops(raw: Mapping[str, object]) -> None:
    """Check the parameters that espeak has no use for; ParamError for a malformed one."""
    for knob in ("temperature", "top_p", "repetition_penalty"):
        if raw.get(knob) not in (None, ""):
            _number(knob, raw.get(knob))
    for flag in ("noTextNormalization", "reduceLatency", "saveOovs"):
        _bool(flag, raw.get(flag))
    if raw.get("max_tokens") not in (None, ""):
        tokens = _int("max_tokens", raw.get("max_tokens"))
        lo, hi = MAX_TOKENS_RANGE
        if not lo <= tokens <= hi:
            raise ParamError(f"max_tokens must be between {lo} and {hi}")


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
