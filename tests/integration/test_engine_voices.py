"""The engine's voices over real sockets: Rime's whole catalogue, both spellings of `lang`.

Rime's documents: every speaker "Must be one of the voices listed in our documentation"; "If
provided, the language must match the language spoken by the provided speaker"; and `lang` takes
"Both the 2-letter ISO 639-1 and the 3-letter ISO 639-2/3 form".
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from rime_local.catalogue import CATALOGUE, Gender, Speaker, find_speaker
from rime_local.languages import LANGUAGES
from rime_local.server import RunningEngine
from rime_local.voice import DEFAULT_RATE_WPM, EspeakChunk, EspeakVoice, get_espeak

TEXT = "Hello there, this is a test."
# Something each language's espeak voice reads as speech, in its own script.
NATIVE_TEXT = {
    "eng": "Hello, how are you today?",
    "spa": "Hola, ¿cómo estás hoy?",
    "fra": "Bonjour, comment allez-vous?",
    "ger": "Guten Tag, wie geht es Ihnen?",
    "por": "Olá, como você está hoje?",
    "jpn": "こんにちは、お元気ですか",
    "heb": "שלום, מה שלומך היום?",
    "hin": "नमस्ते, आज आप कैसे हैं?",
    "ara": "مرحبا، كيف حالك اليوم؟",
}
RATE = 16000


def pcm(engine: RunningEngine, **body: Any) -> httpx.Response:
    """A request for raw 16 kHz PCM; the response, whatever its status."""
    payload = {"text": TEXT, "samplingRate": RATE, **body}
    return httpx.post(engine.http_url, json=payload, headers={"Accept": "audio/pcm"}, timeout=30)


def ok_pcm(engine: RunningEngine, **body: Any) -> bytes:
    response = pcm(engine, **body)
    assert response.status_code == 200, response.text
    return response.content


def is_speech(audio: bytes, rate: int = RATE) -> bool:
    """At least a third of a second of audio, and loud somewhere."""
    samples = np.frombuffer(audio, dtype="<i2")
    return len(samples) > rate // 3 and int(np.abs(samples).max()) > 2000


def first_speaker(model_id: str, lang: str) -> Speaker:
    return next(s for s in CATALOGUE[model_id].values() if s.speaks(lang))


VOICES = sorted(
    (model_id, speaker.name, lang)
    for model_id, speakers in CATALOGUE.items()
    for speaker in speakers.values()
    for lang in speaker.languages
)


def test_the_catalogue_is_rimes_whole_list() -> None:
    # Rime's voices pages count its list of 2026-08-04: Coda "184 voices across 8 languages",
    # Mist "78 (v3), 138 (v2)".
    assert len(CATALOGUE["coda"]) == 184
    assert {lang for s in CATALOGUE["coda"].values() for lang in s.languages} == {
        "eng",
        "ara",
        "fra",
        "ger",
        "hin",
        "jpn",
        "por",
        "spa",
    }
    assert len(CATALOGUE["mistv3"]) == 78
    assert len(CATALOGUE["mistv2"]) == 138
    assert CATALOGUE["arcanav2"].keys() == CATALOGUE["arcana"].keys()
    assert CATALOGUE["arcanav3"].keys() == CATALOGUE["arcana"].keys()


def test_lyra_on_coda_speaks() -> None:
    speaker = find_speaker("coda", "lyra")
    assert speaker is not None
    assert speaker.languages == ("eng",) and speaker.gender is Gender.FEMALE


def test_lyra_on_coda_is_served_in_both_spellings(engine: RunningEngine) -> None:
    bare = ok_pcm(engine, modelId="coda", speaker="lyra")
    assert is_speech(bare)
    assert ok_pcm(engine, modelId="coda", speaker="lyra", lang="en") == bare
    assert ok_pcm(engine, modelId="coda", speaker="lyra", lang="eng") == bare


@settings(max_examples=40, deadline=None)
@given(voice=st.sampled_from(VOICES), short=st.booleans())
def test_every_catalogue_voice_synthesizes(
    engine: RunningEngine, voice: tuple[str, str, str], short: bool
) -> None:
    model_id, name, lang = voice
    spelled = LANGUAGES[lang].short if short else lang
    audio = ok_pcm(engine, modelId=model_id, speaker=name, lang=spelled, text=NATIVE_TEXT[lang])
    assert is_speech(audio)


def espeak_pcm(ssml: str, voice: EspeakVoice) -> bytes:
    """What espeak says for `ssml`, straight from the library."""
    chunks: list[EspeakChunk] = []

    def sink(chunk: EspeakChunk) -> bool:
        chunks.append(chunk)
        return True

    get_espeak().synth_blocking(ssml, voice, DEFAULT_RATE_WPM, sink)
    return b"".join(c.pcm for c in chunks)


def test_every_espeak_voice_the_catalogue_uses_speaks() -> None:
    espeak = get_espeak()
    voices = {
        (s.espeak_voice(lang), lang)
        for v in CATALOGUE.values()
        for s in v.values()
        for lang in s.languages
    }
    assert len({v.name for v, _ in voices}) > 50
    for voice, lang in sorted(voices, key=lambda v: (v[0].name, v[0].pitch)):
        ssml = f"<speak>{NATIVE_TEXT[lang]}</speak>"
        assert is_speech(espeak_pcm(ssml, voice), espeak.sample_rate), voice


@pytest.mark.parametrize("lang", sorted(LANGUAGES))
def test_each_language_in_both_spellings_gives_the_same_audio(
    engine: RunningEngine, lang: str
) -> None:
    model_id = "arcana" if lang == "heb" else "coda"  # Hebrew is "Arcana only"
    speaker = first_speaker(model_id, lang)
    body = {"modelId": model_id, "speaker": speaker.name, "text": NATIVE_TEXT[lang]}
    long = ok_pcm(engine, lang=lang, **body)
    assert is_speech(long)
    assert ok_pcm(engine, lang=LANGUAGES[lang].short, **body) == long


def test_a_voice_says_the_same_text_in_the_same_bytes(engine: RunningEngine) -> None:
    first = ok_pcm(engine, modelId="mistv3", speaker="cove")
    ok_pcm(engine, modelId="coda", speaker="orion", text="Something else in between.")
    assert ok_pcm(engine, modelId="mistv3", speaker="cove") == first
    # The same voice on another model that has it, and an alias of Arcana, sound the same too.
    assert ok_pcm(engine, modelId="mistv2", speaker="cove", speedAlpha=1.0) == first
    assert ok_pcm(engine, modelId="arcanav3", speaker="luna") == ok_pcm(
        engine, modelId="arcana", speaker="luna"
    )


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"speaker": "cove", "lang": "es"}, "speaker 'cove' speaks 'eng', not 'es'"),
        ({"speaker": "cove", "lang": "spa"}, "speaker 'cove' speaks 'eng', not 'spa'"),
        ({"modelId": "coda", "speaker": "lyra", "lang": "ja"}, "speaks 'eng', not 'ja'"),
        ({"modelId": "coda", "speaker": "nadi", "lang": "en"}, "speaks 'hin', not 'en'"),
        ({"speaker": "cove", "lang": "english"}, "unknown lang 'english'; known: eng/en, spa/es"),
        ({"speaker": "cove", "lang": "EN"}, "unknown lang 'EN'"),
        ({"modelId": "coda", "speaker": "cove"}, "unknown speaker 'cove' for modelId 'coda'"),
        ({"modelId": "mist", "speaker": "lyra"}, "unknown speaker 'lyra'"),
    ],
)
def test_a_language_the_speaker_does_not_speak_is_a_clear_400(
    engine: RunningEngine, body: dict[str, Any], fragment: str
) -> None:
    response = pcm(engine, **body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert fragment in response.text


def test_a_voice_filed_under_two_languages_speaks_both(engine: RunningEngine) -> None:
    speaker = find_speaker("mistv3", "mari")
    assert speaker is not None and speaker.languages == ("eng", "spa")
    english = ok_pcm(engine, modelId="mistv3", speaker="mari", lang="en")
    spanish = ok_pcm(engine, modelId="mistv3", speaker="mari", lang="es")
    assert is_speech(english) and is_speech(spanish) and english != spanish
    # Without `lang`, Rime's default: English.
    assert ok_pcm(engine, modelId="mistv3", speaker="mari") == english


def test_without_lang_a_voice_speaks_its_own_language(engine: RunningEngine) -> None:
    body = {"modelId": "coda", "speaker": "nadi", "text": NATIVE_TEXT["hin"]}
    assert ok_pcm(engine, **body) == ok_pcm(engine, lang="hi", **body)


def fundamental_hz(audio: bytes, rate: int = RATE) -> float:
    """The median pitch of the voiced 40 ms frames, by autocorrelation (60 to 400 Hz)."""
    samples = np.frombuffer(audio, dtype="<i2").astype(np.float64)
    frame = int(rate * 0.04)
    pitches = []
    for start in range(0, len(samples) - frame, frame):
        x = samples[start : start + frame]
        x = x - x.mean()
        if np.abs(x).max() < 3000:
            continue
        corr = np.correlate(x, x, mode="full")[frame - 1 :]
        lo, hi = rate // 400, rate // 60
        lag = lo + int(np.argmax(corr[lo:hi]))
        if corr[lag] > 0.5 * corr[0]:
            pitches.append(rate / lag)
    assert pitches, "no voiced frame"
    return float(np.median(pitches))


@settings(max_examples=8, deadline=None)
@given(
    female=st.sampled_from(
        sorted(
            n for n, s in CATALOGUE["coda"].items() if s.gender is Gender.FEMALE and s.speaks("eng")
        )
    ),
    male=st.sampled_from(
        sorted(
            n for n, s in CATALOGUE["coda"].items() if s.gender is Gender.MALE and s.speaks("eng")
        )
    ),
)
def test_female_voices_sound_higher_than_male_ones(
    engine: RunningEngine, female: str, male: str
) -> None:
    high = fundamental_hz(ok_pcm(engine, modelId="coda", speaker=female))
    low = fundamental_hz(ok_pcm(engine, modelId="coda", speaker=male))
    assert high > 1.2 * low, (female, high, male, low)


def ws3(engine: RunningEngine, query: str, text: str = TEXT) -> bytes:
    """The PCM of one /ws3 synthesis of `text`."""

    async def go() -> bytes:
        url = f"{engine.ws_url}/ws3?audioFormat=pcm&samplingRate={RATE}&{query}"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"text": text}))
            await ws.send(json.dumps({"operation": "eos"}))
            data = b""
            try:
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if event["type"] == "chunk":
                        data += base64.b64decode(event["data"])
            except ConnectionClosedOK:
                return data

    return asyncio.run(go())


def test_ws3_takes_both_spellings_and_gives_the_http_audio(engine: RunningEngine) -> None:
    long = ws3(engine, "modelId=coda&speaker=lyra&lang=eng")
    assert is_speech(long)
    assert ws3(engine, "modelId=coda&speaker=lyra&lang=en") == long
    assert ok_pcm(engine, modelId="coda", speaker="lyra", lang="en") == long
    spanish = first_speaker("coda", "spa").name
    text = NATIVE_TEXT["spa"]
    assert ws3(engine, f"modelId=coda&speaker={spanish}&lang=es", text) == ws3(
        engine, f"modelId=coda&speaker={spanish}&lang=spa", text
    )


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("modelId=coda&speaker=lyra&lang=es", b"speaks 'eng', not 'es'"),
        ("speaker=cove&lang=xx", b"unknown lang 'xx'"),
    ],
)
def test_ws3_refuses_a_language_the_speaker_does_not_speak(
    engine: RunningEngine, query: str, fragment: bytes
) -> None:
    async def go() -> None:
        async with websockets.connect(f"{engine.ws_url}/ws3?{query}"):
            pass

    with pytest.raises(InvalidStatus) as caught:
        asyncio.run(go())
    assert caught.value.response.status_code == 400
    assert fragment in caught.value.response.body
