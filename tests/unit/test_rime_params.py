"""Typed Rime request parameters: what goes on the wire, and what is refused before sending."""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.rime.errors import BadRequest, InvalidRequest, PermanentError
from pipeline.rime.models import MODELS
from pipeline.rime.params import AudioFormat, Segmenting, TtsRequest, VoiceParams
from pipeline.rime.ws import ws3_url

COVE = VoiceParams("cove", "mistv2")


def test_json_body_carries_only_set_fields() -> None:
    req = TtsRequest("Hello there.", COVE)
    assert req.to_json() == {"text": "Hello there.", "speaker": "cove", "modelId": "mistv2"}


def test_json_body_uses_rime_names_for_every_field() -> None:
    voice = VoiceParams(
        "astra",
        "arcana",
        lang="eng",
        sampling_rate=8000,
        speed_alpha=1.25,
        pause_between_brackets=True,
        phonemize_between_brackets=True,
        no_text_normalization=True,
        temperature=0.5,
        top_p=0.9,
        repetition_penalty=1.1,
    )
    body = TtsRequest("A [slow] word.", voice, (3.0,)).to_json()
    assert body == {
        "text": "A [slow] word.",
        "speaker": "astra",
        "modelId": "arcana",
        "lang": "eng",
        "samplingRate": 8000,
        "speedAlpha": 1.25,
        "pauseBetweenBrackets": True,
        "phonemizeBetweenBrackets": True,
        "noTextNormalization": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "repetition_penalty": 1.1,
        "inlineSpeedAlpha": "3",
    }


def test_inline_speed_alpha_is_written_the_way_rime_takes_it() -> None:
    req = TtsRequest("This is [slow] and [fast]", COVE, (3.0, 0.5))
    assert req.to_json()["inlineSpeedAlpha"] == "3, 0.5"


@given(st.lists(st.floats(min_value=0.01, max_value=100, allow_nan=False), min_size=1, max_size=8))
def test_inline_speed_alpha_text_reads_back_to_the_same_numbers(speeds: list[float]) -> None:
    text = " ".join(f"[w{i}]" for i in range(len(speeds)))
    req = TtsRequest(text, COVE, tuple(speeds))
    written = req.inline_speed_alpha_text
    assert written is not None
    assert [float(part) for part in written.split(", ")] == speeds


def test_the_request_body_carries_every_synthesis_parameter() -> None:
    params = VoiceParams(
        speaker="astra",
        model_id="arcana",
        lang="spa",
        sampling_rate=24000,
        speed_alpha=0.8,
        pause_between_brackets=False,
        phonemize_between_brackets=True,
        no_text_normalization=False,
        temperature=0.3,
        top_p=0.95,
        repetition_penalty=1.5,
    )
    req = TtsRequest("Hola [lento].", params, (2.0,))
    assert req.to_json() == {
        "text": "Hola [lento].",
        "speaker": "astra",
        "modelId": "arcana",
        "lang": "spa",
        "samplingRate": 24000,
        "speedAlpha": 0.8,
        "phonemizeBetweenBrackets": True,
        "temperature": 0.3,
        "top_p": 0.95,
        "repetition_penalty": 1.5,
        "inlineSpeedAlpha": "2",
    }
    assert req.text == "Hola [lento]."
    assert req.inline_speed_alpha == (2.0,)
    assert "pauseBetweenBrackets" not in req.to_json()


def test_requests_are_frozen() -> None:
    req = TtsRequest("Hi.", COVE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.text = "changed"  # type: ignore[misc]


@given(st.text(min_size=1, max_size=600).filter(lambda t: t.strip() != ""))
def test_text_length_limit_is_the_models(text: str) -> None:
    limit = MODELS["mistv2"].max_chars
    if len(text) <= limit:
        assert TtsRequest(text, COVE).text == text
    else:
        with pytest.raises(InvalidRequest, match=f"at most {limit}"):
            TtsRequest(text, COVE)


def test_text_at_exactly_the_limit_is_accepted_and_one_more_is_not() -> None:
    assert len(TtsRequest("a" * 500, COVE).text) == 500
    with pytest.raises(InvalidRequest, match="501 characters"):
        TtsRequest("a" * 501, COVE)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_blank_text_is_refused(text: str) -> None:
    with pytest.raises(InvalidRequest, match="text is required"):
        TtsRequest(text, COVE)


@pytest.mark.parametrize(
    ("model", "rate", "ok"),
    [
        ("mistv2", 4000, True),
        ("mistv2", 44100, True),
        ("mistv2", 3999, False),
        ("mistv2", 48000, False),
        ("arcana", 24000, True),
        ("arcana", 96000, True),
        ("arcana", 22000, False),
        ("arcana", 4000, False),
    ],
)
def test_sampling_rate_must_be_one_the_model_accepts(model: str, rate: int, ok: bool) -> None:
    if ok:
        assert VoiceParams("cove", model, sampling_rate=rate).sampling_rate == rate
    else:
        with pytest.raises(InvalidRequest, match=f"samplingRate {rate} is not accepted by {model}"):
            VoiceParams("cove", model, sampling_rate=rate)


def test_an_unknown_model_is_left_to_the_server_within_basic_sanity() -> None:
    voice = VoiceParams("cove", "mistv9", sampling_rate=123456)
    assert voice.model is None
    assert voice.max_chars == 500
    with pytest.raises(InvalidRequest, match="positive"):
        VoiceParams("cove", "mistv9", sampling_rate=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"speaker": " "}, "speaker is required"),
        ({"speed_alpha": 0.0}, "speedAlpha"),
        ({"speed_alpha": float("nan")}, "speedAlpha"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -0.1}, "temperature"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"lang": "tlh"}, "lang 'tlh' is not one arcana speaks"),
        ({"lang": "EN"}, "lang 'EN' is not one arcana speaks"),
    ],
)
def test_out_of_range_parameters_are_refused(changes: dict[str, object], message: str) -> None:
    base = {"speaker": "astra", "model_id": "arcana"}
    with pytest.raises(InvalidRequest, match=message) as info:
        VoiceParams(**{**base, **changes})  # type: ignore[arg-type]
    # Refused before sending, but the same class the server's 400 gives: one permanent failure.
    assert isinstance(info.value, BadRequest)
    assert isinstance(info.value, PermanentError)
    assert info.value.status is None


@pytest.mark.parametrize(
    ("model", "lang", "sent"),
    [
        ("mistv2", "en", "eng"),
        ("mistv2", "eng", "eng"),
        ("coda", "ja", "jpn"),
        ("mistv9", "es", "spa"),
    ],
)
def test_lang_in_either_spelling_goes_out_as_the_three_letter_code(
    model: str, lang: str, sent: str
) -> None:
    voice = VoiceParams("cove", model, lang=lang)
    assert voice.lang == sent
    assert voice.to_json()["lang"] == sent
    assert voice.to_query(AudioFormat.PCM)["lang"] == sent
    assert voice == VoiceParams("cove", model, lang=sent)


def test_a_language_the_models_voices_do_not_speak_is_refused_before_sending() -> None:
    with pytest.raises(InvalidRequest, match="lang 'he' is not one coda speaks"):
        VoiceParams("lyra", "coda", lang="he")
    assert VoiceParams("lyra", "arcana", lang="he").lang == "heb"


def test_inline_speeds_must_match_the_bracketed_words() -> None:
    with pytest.raises(InvalidRequest, match="2 values for 1"):
        TtsRequest("Only [one] here.", COVE, (3.0, 0.5))
    with pytest.raises(InvalidRequest, match="positive"):
        TtsRequest("A [word].", COVE, (-1.0,))


def test_audio_formats_map_to_accept_headers_and_ws_names() -> None:
    assert {f: f.accept for f in AudioFormat} == {
        AudioFormat.MP3: "audio/mp3",
        AudioFormat.WAV: "audio/wav",
        AudioFormat.PCM: "audio/pcm",
        AudioFormat.MULAW: "audio/x-mulaw",
        AudioFormat.OGG_OPUS: "audio/ogg;codecs=opus",
        AudioFormat.WEBM_OPUS: "audio/webm;codecs=opus",
    }
    assert {f: f.ws_name for f in AudioFormat if f.ws_name} == {
        AudioFormat.MP3: "mp3",
        AudioFormat.MULAW: "mulaw",
        AudioFormat.PCM: "pcm",
    }


def test_ws_query_is_strings_with_format_and_segment() -> None:
    voice = VoiceParams("cove", "mistv2", sampling_rate=8000, speed_alpha=1.0, lang="eng")
    assert voice.to_query(AudioFormat.MULAW, Segmenting.NEVER) == {
        "speaker": "cove",
        "modelId": "mistv2",
        "lang": "eng",
        "samplingRate": "8000",
        "speedAlpha": "1",
        "audioFormat": "mulaw",
        "segment": "never",
    }
    assert "segment" not in voice.to_query(AudioFormat.PCM, None)
    with pytest.raises(InvalidRequest, match="do not stream wav"):
        voice.to_query(AudioFormat.WAV)


@pytest.mark.parametrize(
    "base",
    ["ws://127.0.0.1:8123", "ws://127.0.0.1:8123/", "ws://127.0.0.1:8123/ws3"],
)
def test_ws3_url_adds_the_path_once_and_the_query(base: str) -> None:
    voice = VoiceParams("cove", "mistv2", pause_between_brackets=True)
    url = urlsplit(ws3_url(base, voice, AudioFormat.PCM, Segmenting.NEVER))
    assert (url.scheme, url.netloc, url.path) == ("ws", "127.0.0.1:8123", "/ws3")
    assert parse_qs(url.query) == {
        "speaker": ["cove"],
        "modelId": ["mistv2"],
        "pauseBetweenBrackets": ["true"],
        "audioFormat": ["pcm"],
        "segment": ["never"],
    }
