"""The client's model table (`pipeline.rime.models`) checked against the engine over real HTTP.

The engine keeps its own facts, written from Rime's documents (`rime_local.models`), so this is
the test that catches a wrong fact in the client's table: rates the client allows that Rime
refuses (or the reverse), a default rate the client assumes but Rime doesn't use, a speed
convention the wrong way round, a text limit that differs, a language no voice of the model
speaks (or one the client refuses that some voice speaks).

A disagreement that Rime's documents settle against the client is a strict xfail below, with
the document that settles it: the fix belongs in `pipeline/rime/models.py`, and once it is made
the mark fails the run until it is removed.
"""

from __future__ import annotations

import struct
from typing import Any

import httpx
import pytest

from pipeline.rime.languages import SHORT_CODES
from pipeline.rime.models import MODELS, ModelInfo
from rime_local.catalogue import CATALOGUE
from rime_local.server import RunningEngine

TEXT = "The quick brown fox jumps over the lazy dog, twice before breakfast."

# (check, model id) -> why the client's fact is wrong, from Rime's documents.
CLIENT_ERRORS: dict[tuple[str, str], str] = {}


def models(check: str) -> list[Any]:
    """Every model the client knows, marked where the client's fact is known to be wrong."""
    params = []
    for model_id in sorted(MODELS):
        reason = CLIENT_ERRORS.get((check, model_id))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(model_id, marks=marks, id=model_id))
    return params


def _speaker(model_id: str, lang: str = "eng") -> str:
    """The first of the engine's voices of `model_id` that speaks `lang`."""
    speakers = [s.name for s in CATALOGUE.get(model_id, {}).values() if s.speaks(lang)]
    assert speakers, f"the engine has no {lang!r} voice of {model_id!r}, which the client knows"
    return speakers[0]


def _body(model_id: str, **fields: object) -> dict[str, object]:
    return {"text": TEXT, "speaker": _speaker(model_id), "modelId": model_id, **fields}


def status(engine: RunningEngine, body: dict[str, object]) -> tuple[int, str]:
    """The status of a request, without waiting for its audio (an error body is read)."""
    headers = {"Accept": "audio/pcm"}
    with httpx.stream("POST", engine.http_url, json=body, headers=headers, timeout=30) as r:
        return r.status_code, "" if r.status_code == 200 else r.read().decode()


def audio(engine: RunningEngine, body: dict[str, object], accept: str = "audio/pcm") -> bytes:
    """The whole body of a request that must succeed."""
    response = httpx.post(engine.http_url, json=body, headers={"Accept": accept}, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


def boundaries(model: ModelInfo) -> tuple[list[int], list[int]]:
    """Rates at the edges of what the client allows, and the rates just outside them."""
    if model.rate_set is not None:
        inside = sorted(model.rate_set)
        outside = sorted({r + d for r in inside for d in (-1, 1)} - model.rate_set)
        return inside, outside
    assert model.rate_range is not None
    lo, hi = model.rate_range
    return [lo, hi], [lo - 1, hi + 1]


@pytest.mark.parametrize("model_id", models("accepted_rates"))
def test_the_engine_accepts_the_clients_rates_and_refuses_just_outside(
    engine: RunningEngine, model_id: str
) -> None:
    model = MODELS[model_id]
    inside, outside = boundaries(model)
    for rate in [model.default_sampling_rate, *inside]:
        code, message = status(engine, _body(model_id, samplingRate=rate))
        assert code == 200, f"{model_id} at {rate} Hz: {code} {message}"
    for rate in outside:
        code, message = status(engine, _body(model_id, samplingRate=rate))
        assert code == 400, f"{model_id} at {rate} Hz was accepted"
        assert "samplingRate" in message


@pytest.mark.parametrize("model_id", models("default_rate"))
def test_without_a_rate_the_audio_comes_at_the_clients_default(
    engine: RunningEngine, model_id: str
) -> None:
    wav = audio(engine, _body(model_id), accept="audio/wav")
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    (rate,) = struct.unpack_from("<I", wav, 24)
    assert rate == MODELS[model_id].default_sampling_rate


@pytest.mark.parametrize("model_id", models("speed"))
def test_the_clients_speed_alpha_speeds_up_and_slows_down(
    engine: RunningEngine, model_id: str
) -> None:
    model = MODELS[model_id]

    def seconds(speed: float) -> float:
        body = _body(model_id, samplingRate=16000, speedAlpha=model.speed_alpha(speed))
        return len(audio(engine, body)) / 2 / 16000

    normal = seconds(1.0)
    assert seconds(1.5) < normal * 0.9, "speed 1.5 should be faster"
    assert seconds(0.7) > normal * 1.1, "speed 0.7 should be slower"


@pytest.mark.parametrize("model_id", models("max_chars"))
def test_the_clients_max_chars_is_the_engines_limit(engine: RunningEngine, model_id: str) -> None:
    limit = MODELS[model_id].max_chars
    longest = (TEXT + " ") * (limit // len(TEXT) + 1)
    code, message = status(engine, _body(model_id, text=longest[:limit]))
    assert code == 200, f"{limit} characters refused: {message}"
    code, message = status(engine, _body(model_id, text=longest[: limit + 1]))
    assert code == 400 and str(limit) in message, f"{limit + 1} characters: {code} {message}"


@pytest.mark.parametrize("model_id", models("languages"))
def test_the_clients_languages_are_those_the_engines_voices_speak(
    engine: RunningEngine, model_id: str
) -> None:
    spoken = {lang for s in CATALOGUE[model_id].values() for lang in s.languages}
    assert spoken <= MODELS[model_id].languages, "some voice speaks a language the client refuses"
    for lang in sorted(MODELS[model_id].languages):
        speaker = _speaker(model_id, lang)
        for spelling in (lang, SHORT_CODES[lang]):
            code, message = status(engine, _body(model_id, speaker=speaker, lang=spelling))
            assert code == 200, f"{model_id} {speaker} in {spelling!r}: {code} {message}"
