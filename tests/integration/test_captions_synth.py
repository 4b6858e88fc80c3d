"""A segment synthesized with word times over /ws3 (`WsSynthesizer`) through `synthesize_segment`:
the same retries, limiter and billing as HTTP, against the local engine with injected faults."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.limits import LimitConfig, LocalLimiter
from pipeline.retry import RetryPolicy
from pipeline.rime.params import TtsRequest, VoiceParams
from pipeline.rime.ws import WsSynthesizer
from pipeline.synth import Attempt, synthesize_segment
from rime_local.server import RunningEngine

FAST = RetryPolicy(max_attempts=8, initial_wait=0.001, max_wait=0.01, jitter=0.0)
VOICE = VoiceParams(speaker="cove", model_id="mistv2", sampling_rate=16000)
TEXT = "The river runs to the sea past the old mill, and the [slowly] quiet town."


def _limiter() -> LocalLimiter:
    return LocalLimiter(LimitConfig(concurrency=2))


async def test_words_come_with_the_audio_and_speeds_travel_with_the_text(
    engine: RunningEngine,
) -> None:
    before = engine.metrics()
    result = await synthesize_segment(
        object(),  # type: ignore[arg-type]  # never asked: the timed client speaks
        _limiter(),
        TtsRequest(TEXT, VOICE, (3.0,)),
        policy=FAST,
        timed=WsSynthesizer(engine.ws_url),
    )
    assert result.words is not None
    assert [w.word for w in result.words][:3] == ["The", "river", "runs"]
    assert result.words[-1].word == "town."
    assert result.words[-1].end <= result.seconds + 0.001
    after = engine.metrics()
    assert after["requests"] - before["requests"] == 1
    # A slower [word] (Mist v2: a higher alpha is slower) makes the audio longer.
    plain = await synthesize_segment(
        object(),  # type: ignore[arg-type]
        _limiter(),
        TtsRequest(TEXT, VOICE, (1.0,)),
        policy=FAST,
        timed=WsSynthesizer(engine.ws_url),
    )
    assert result.seconds > plain.seconds + 0.05


async def test_faults_are_retried_and_billed_as_the_engine_counts_them(
    engine_factory: Callable[..., RunningEngine],
) -> None:
    # Refused upgrades (500, 503: nothing billed) and audio far too long for its text (billed).
    faulty = engine_factory(fault_seed=7, fault_error_rate=0.3, fault_implausible_rate=0.3)
    attempts: list[Attempt] = []
    audio_began = 0

    def on_audio() -> None:
        nonlocal audio_began
        audio_began += 1

    for _ in range(4):
        result = await synthesize_segment(
            object(),  # type: ignore[arg-type]
            _limiter(),
            TtsRequest(TEXT, VOICE),
            policy=FAST,
            on_attempt=attempts.append,
            on_audio=on_audio,
            timed=WsSynthesizer(faulty.ws_url),
        )
        assert result.words
    metrics = faulty.metrics()
    failed = [a for a in attempts if a.error is not None]
    assert failed, "the seed injects faults: some attempts must fail"
    assert all(a.retryable for a in failed)
    # Both kinds happened: refusals bill nothing, rejected audio bills every character.
    assert {a.billed_chars for a in failed} == {0, len(TEXT)}
    assert len(attempts) == metrics["requests"]
    # What we count as billed is what the engine says it generated, rejected audio included.
    assert sum(a.billed_chars for a in attempts) == metrics["billed_characters"]
    assert audio_began == metrics["audio_started"]
