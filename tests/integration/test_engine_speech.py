"""Real speech from espeak-ng: durations, speed conventions, markup, timestamps, laziness."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from rime_local.catalogue import find_speaker
from rime_local.script import MarkupOptions
from rime_local.server import RunningEngine
from rime_local.synthesis import Audio, Utterance, Voicing, Words
from rime_local.voice import DEFAULT_RATE_WPM, get_espeak


def seconds(engine: RunningEngine, text: str, rate: int = 16000, **body: object) -> float:
    payload = {"text": text, "speaker": "cove", "samplingRate": rate, **body}
    response = httpx.post(
        engine.http_url, json=payload, headers={"Accept": "audio/pcm"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return len(response.content) / 2 / rate


def test_duration_grows_with_text_length(engine: RunningEngine) -> None:
    durations = [seconds(engine, "Count the words. " * n) for n in (1, 3, 9)]
    assert durations[0] < durations[1] < durations[2]
    # Roughly proportional: three times the text is at least twice the audio.
    assert durations[2] > 2 * durations[1] > 4 * durations[0]


def test_speed_alpha_follows_each_models_convention(engine: RunningEngine) -> None:
    text = "The quick brown fox jumps over the lazy dog near the river bank."
    base_v2 = seconds(engine, text, modelId="mistv2")
    slow_v2 = seconds(engine, text, modelId="mistv2", speedAlpha=1.6)  # lower is faster
    fast_v3 = seconds(engine, text, modelId="mistv3", speedAlpha=1.6)  # higher is faster
    assert slow_v2 > base_v2 * 1.3
    assert fast_v3 < base_v2 / 1.3


def test_pause_markup_is_silence_on_mist_only(engine: RunningEngine) -> None:
    text = "Before the pause. <1500> After the pause."
    plain = seconds(engine, text, modelId="mistv2")
    paused = seconds(engine, text, modelId="mistv2", pauseBetweenBrackets=True)
    arcana = {"modelId": "arcana", "speaker": "luna", "pauseBetweenBrackets": True}
    arcana_plain = seconds(engine, text, modelId="arcana", speaker="luna")
    arcana_paused = seconds(engine, text, **arcana)
    assert paused - plain == pytest.approx(1.5, abs=0.15)
    assert arcana_paused == pytest.approx(arcana_plain, abs=0.1)


def test_inline_speed_slows_the_bracketed_word(engine: RunningEngine) -> None:
    text = "Say [extraordinarily] now."
    normal = seconds(engine, text)
    slowed = seconds(engine, text, inlineSpeedAlpha="3")
    hurried = seconds(engine, text, inlineSpeedAlpha=[0.5])
    assert slowed > normal + 0.2
    assert hurried < normal


def test_phoneme_brackets_change_what_is_said(engine: RunningEngine) -> None:
    text = "{h'El.o} world"
    as_text = seconds(engine, text)
    as_phonemes = seconds(engine, text, phonemizeBetweenBrackets=True)
    assert as_phonemes > 0.3
    assert abs(as_phonemes - as_text) > 0.05


def _voicing(rate: int = 22050) -> Voicing:
    speaker = find_speaker("mistv3", "cove")
    assert speaker is not None
    return Voicing(speaker.espeak_voice("eng"), DEFAULT_RATE_WPM, rate, MarkupOptions(pauses=True))


async def _collect(synthesis: Utterance) -> tuple[bytes, list[Words], list[int]]:
    pcm = b""
    words: list[Words] = []
    done_at_first_audio: list[int] = []
    async for event in synthesis.events():
        if isinstance(event, Audio):
            if not pcm:
                done_at_first_audio.append(synthesis.sentences_done)
            pcm += event.pcm
        else:
            words.append(event)
    return pcm, words, done_at_first_audio


def test_first_audio_comes_before_later_sentences_are_synthesized() -> None:
    text = "First sentence here. Second one follows. Third comes next. And a fourth."
    synthesis = Utterance(text, _voicing(), get_espeak())
    assert synthesis.sentences_total == 4
    _, _, done_at_first_audio = asyncio.run(_collect(synthesis))
    assert done_at_first_audio == [0]
    assert synthesis.sentences_done == 4


def test_timestamps_are_monotonic_inside_the_audio_and_name_the_words() -> None:
    text = "Good morning, everyone. <400> Take 2.5ml of the solution twice a day."
    rate = 16000
    pcm, batches, _ = asyncio.run(_collect(Utterance(text, _voicing(rate), get_espeak())))
    duration = len(pcm) / 2 / rate
    words = [w for batch in batches for w in batch.words]
    starts = [s for batch in batches for s in batch.start]
    ends = [e for batch in batches for e in batch.end]
    spoken = "Good morning, everyone. Take 2.5ml of the solution twice a day."
    assert words == spoken.split(" ")
    assert starts == sorted(starts)
    assert all(s <= e for s, e in zip(starts, ends, strict=True))
    assert all(e <= s2 for e, s2 in zip(ends, starts[1:], strict=False))
    assert ends[-1] <= duration + 0.01
    # The 400 ms pause sits between "everyone." and "Take".
    gap = starts[words.index("Take")] - ends[words.index("everyone.")]
    assert gap >= 0.4
