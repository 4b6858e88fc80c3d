"""`synthesize_segment` with the real local limiter, a fast retry policy and our own synthesizer:
what is retried, what every attempt reports and bills, and what the limiter hears."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.limits import LimitConfig, LocalLimiter
from pipeline.retry import RetryPolicy
from pipeline.rime.errors import (
    AuthError,
    BadRequest,
    ConnectError,
    PermanentError,
    ProtocolError,
    RateLimited,
    RimeError,
    ServerError,
    StreamCut,
    Timeout,
)
from pipeline.rime.params import AudioFormat, TtsRequest, VoiceParams
from pipeline.synth import (
    REQUEST_FORMAT,
    Attempt,
    AudioRejected,
    SynthResult,
    check_plausible,
    plausible_seconds,
    synthesize_segment,
)
from tests.fixtures.synthesizers import (
    CANCELLED,
    SPOKEN,
    Audio,
    Gate,
    Slow,
    ToneSynthesizer,
    speech_for,
    tone_seconds,
)

FAST = RetryPolicy(initial_wait=0.001, max_wait=0.01, jitter=0.0)
VOICE = VoiceParams(speaker="cove", model_id="mistv2", sampling_rate=8000)
TEXT = "The quick brown fox jumps over the lazy dog."
CHARS = len(TEXT)


def request(text: str = TEXT) -> TtsRequest:
    return TtsRequest(text, VOICE)


def limiter(
    concurrency: int, *, adaptive: bool = False, probe_after: int = 10, cooldown: float = 2.0
) -> LocalLimiter:
    return LocalLimiter(
        LimitConfig(
            concurrency=concurrency,
            adaptive=adaptive,
            probe_after=probe_after,
            cooldown_seconds=cooldown,
        )
    )


async def synthesize(
    synth: ToneSynthesizer,
    *,
    text: str = TEXT,
    limits: LocalLimiter | None = None,
    policy: RetryPolicy = FAST,
) -> tuple[SynthResult, list[Attempt]]:
    """Synthesize `text`; the result and every attempt reported."""
    attempts: list[Attempt] = []
    result = await synthesize_segment(
        synth,
        limits or limiter(concurrency=2),
        request(text),
        policy=policy,
        on_attempt=attempts.append,
    )
    return result, attempts


async def failing(
    synth: ToneSynthesizer,
    error: type[RimeError],
    *,
    limits: LocalLimiter | None = None,
    policy: RetryPolicy = FAST,
) -> tuple[RimeError, list[Attempt]]:
    """Synthesize TEXT expecting `error`; the error and every attempt reported."""
    attempts: list[Attempt] = []
    with pytest.raises(error) as raised:
        await synthesize_segment(
            synth,
            limits or limiter(concurrency=2),
            request(),
            policy=policy,
            on_attempt=attempts.append,
        )
    return raised.value, attempts


# Success


async def test_one_request_gives_the_audio_and_one_billed_attempt() -> None:
    synth = ToneSynthesizer()

    result, attempts = await synthesize(synth)

    [sent] = synth.requests
    assert sent.req == request()
    assert sent.fmt is REQUEST_FORMAT is AudioFormat.PCM
    assert result.pcm == speech_for(request())
    assert result.sampling_rate == 8000
    assert result.seconds == pytest.approx(len(result.pcm) / 2 / 8000)
    assert result.seconds == pytest.approx(tone_seconds(request()), abs=1e-3)
    assert result.attempts == 1
    assert attempts == [Attempt(1, None, CHARS)]


@given(
    words=st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyzé,.!?'-", min_size=1, max_size=14),
        min_size=1,
        max_size=30,
    ),
    pauses=st.lists(st.integers(0, 3000), max_size=3),
)
@settings(max_examples=60, deadline=None)
def test_the_test_synthesizers_speech_is_plausible_for_any_text(
    words: list[str], pauses: list[int]
) -> None:
    text = " ".join(words + [f"<{ms}>" for ms in pauses])[:500]
    req = TtsRequest(text, VOICE)
    low, high = plausible_seconds(req)

    seconds = check_plausible(speech_for(req), 8000, req)

    assert low <= seconds <= high
    assert seconds == pytest.approx(tone_seconds(req), abs=1e-3)


# Retries


TRANSIENT = [
    pytest.param(ServerError("upstream overloaded", status=503), 0, id="5xx"),
    pytest.param(RateLimited("too many requests", retry_after=None), 0, id="429"),
    pytest.param(ConnectError("connection refused"), 0, id="connect"),
    pytest.param(Timeout("timed out connecting"), 0, id="timeout"),
    pytest.param(ProtocolError("unreadable frame"), 0, id="protocol"),
    # A cut stream was generated, and Rime bills it.
    pytest.param(StreamCut("audio stream cut: 100 of 900 bytes"), CHARS, id="cut"),
]


@pytest.mark.parametrize(("error", "billed"), TRANSIENT)
async def test_a_transient_error_is_retried_and_billed_by_the_rules(
    error: RimeError, billed: int
) -> None:
    synth = ToneSynthesizer()
    synth.on_text(TEXT, error)

    result, attempts = await synthesize(synth)

    assert [r.outcome for r in synth.requests] == [type(error).__name__, SPOKEN]
    assert result.attempts == 2
    assert result.pcm == speech_for(request())
    assert attempts == [
        Attempt(1, str(error), billed, retryable=True),
        Attempt(2, None, CHARS),
    ]


async def test_several_transient_errors_are_each_reported_before_the_success() -> None:
    synth = ToneSynthesizer()
    errors: list[RimeError] = [
        RateLimited("slow down", retry_after=0.001),
        StreamCut("reset mid-body"),
        ServerError("bad gateway", status=502),
    ]
    synth.on_text(TEXT, *errors)

    result, attempts = await synthesize(synth)

    assert result.attempts == 4
    assert attempts == [
        Attempt(1, str(errors[0]), 0, True),
        Attempt(2, str(errors[1]), CHARS, True),
        Attempt(3, str(errors[2]), 0, True),
        Attempt(4, None, CHARS),
    ]


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(BadRequest("unknown speaker 'nobody'", status=400), id="400"),
        pytest.param(AuthError("invalid api key", status=401), id="401"),
        pytest.param(PermanentError("not found", status=404), id="404"),
    ],
)
async def test_a_permanent_error_is_not_retried(error: RimeError) -> None:
    synth = ToneSynthesizer()
    synth.on_text(TEXT, error)

    raised, attempts = await failing(synth, type(error))

    assert str(raised) == str(error)
    assert len(synth.requests) == 1
    assert attempts == [Attempt(1, str(error), 0, retryable=False)]


async def test_a_permanent_error_after_retries_ends_them() -> None:
    synth = ToneSynthesizer()
    synth.on_text(TEXT, ServerError("busy", status=503), BadRequest("text too long", status=400))

    _, attempts = await failing(synth, BadRequest)

    assert len(synth.requests) == 2
    assert [(a.number, a.retryable) for a in attempts] == [(1, True), (2, False)]


async def test_retries_stop_at_the_policys_attempt_limit_with_the_last_error() -> None:
    synth = ToneSynthesizer()
    synth.on_text(TEXT, then=StreamCut("cut again"))
    policy = RetryPolicy(max_attempts=3, initial_wait=0.001, max_wait=0.01, jitter=0.0)

    raised, attempts = await failing(synth, StreamCut, policy=policy)

    assert "cut again" in str(raised)
    assert len(synth.requests) == 3
    # Every cut stream was generated, so every one is billed.
    assert attempts == [Attempt(n, str(raised), CHARS, True) for n in (1, 2, 3)]


# Implausible audio


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(0.0, id="no audio"),
        pytest.param(0.05, id="too short"),
        pytest.param(600.0, id="too long"),
    ],
)
async def test_audio_that_cannot_be_the_speech_of_its_text_is_rejected_billed_and_retried(
    seconds: float,
) -> None:
    synth = ToneSynthesizer()
    synth.on_text(TEXT, Audio(seconds))

    result, attempts = await synthesize(synth)

    first, second = attempts
    assert first.error is not None
    assert f"{seconds:.2f}s of audio for {CHARS} characters" in first.error
    assert (first.billed_chars, first.retryable) == (CHARS, True)
    assert second == Attempt(2, None, CHARS)
    assert result.pcm == speech_for(request())


async def test_audio_rejected_every_time_fails_the_segment_as_audio_rejected() -> None:
    synth = ToneSynthesizer()
    synth.on_text(TEXT, then=Audio(0.01))
    policy = RetryPolicy(max_attempts=2, initial_wait=0.001, max_wait=0.01, jitter=0.0)

    raised, attempts = await failing(synth, AudioRejected, policy=policy)

    assert isinstance(raised, StreamCut)  # transient: a later request may be fine
    assert [a.billed_chars for a in attempts] == [CHARS, CHARS]


# Waiting


async def test_retry_after_is_a_floor_under_the_policys_wait() -> None:
    synth = ToneSynthesizer()
    synth.on_text(TEXT, RateLimited("slow down", retry_after=0.3))
    started = time.monotonic()

    await synthesize(synth)

    # FAST never waits more than 0.01 s by itself.
    assert time.monotonic() - started >= 0.3
    assert len(synth.requests) == 2


async def test_without_retry_after_a_429_waits_only_the_policys_backoff() -> None:
    synth = ToneSynthesizer()
    synth.on_text(TEXT, RateLimited("slow down", retry_after=None))
    started = time.monotonic()

    await synthesize(synth)

    assert time.monotonic() - started < 0.3
    assert len(synth.requests) == 2


async def test_a_short_retry_after_does_not_shorten_the_policys_wait() -> None:
    synth = ToneSynthesizer()
    synth.on_text(TEXT, RateLimited("slow down", retry_after=0.001))
    patient = RetryPolicy(initial_wait=0.2, max_wait=0.2, jitter=0.0)
    started = time.monotonic()

    await synthesize(synth, policy=patient)

    assert time.monotonic() - started >= 0.2


async def test_the_slot_is_held_for_a_request_and_not_through_the_backoff() -> None:
    synth = ToneSynthesizer(default=Slow(0.01))
    synth.on_text("First of two.", RateLimited("slow down", retry_after=0.1))
    one_slot = limiter(concurrency=1)

    await asyncio.gather(
        synthesize(synth, text="First of two.", limits=one_slot),
        synthesize(synth, text="Second of two.", limits=one_slot),
    )

    # The second segment's request went while the first one waited out its Retry-After.
    assert synth.texts() == ["First of two.", "Second of two.", "First of two."]
    assert synth.peak_in_flight == 1


async def test_requests_in_flight_never_exceed_the_limiters_cap() -> None:
    synth = ToneSynthesizer(default=Slow(0.01))
    two = limiter(concurrency=2)

    await asyncio.gather(
        *(synthesize(synth, text=f"Line {n} of six.", limits=two) for n in range(6))
    )

    assert len(synth.requests) == 6
    assert synth.peak_in_flight == 2
    assert two.peak_in_flight == 2


async def test_a_cancelled_request_gives_its_slot_back_and_reports_no_attempt() -> None:
    synth = ToneSynthesizer()
    gate = Gate()
    synth.on_text(TEXT, gate)
    one_slot = limiter(concurrency=1)
    attempts: list[Attempt] = []
    task = asyncio.create_task(
        synthesize_segment(synth, one_slot, request(), policy=FAST, on_attempt=attempts.append)
    )
    await gate.wait_arrived()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert [r.outcome for r in synth.requests] == [CANCELLED]
    assert attempts == []
    # The slot is free again: a second request gets through at once.
    await asyncio.wait_for(synthesize(synth, limits=one_slot), timeout=2)


# What the limiter hears


async def test_the_limiter_hears_of_each_accepted_audio_as_a_success() -> None:
    # Adaptive, probing after every success: each success the limiter hears raises the cap.
    adaptive = limiter(concurrency=8, adaptive=True, probe_after=1)
    assert adaptive.cap == 4
    synth = ToneSynthesizer()
    synth.on_text(TEXT, Audio(0.0), ServerError("busy", status=503))

    await synthesize(synth, limits=adaptive)

    # Three requests, but only the last one's audio was accepted.
    assert len(synth.requests) == 3
    assert adaptive.cap == 5


async def test_the_limiter_hears_of_every_429_and_of_no_other_error() -> None:
    adaptive = limiter(concurrency=32, adaptive=True, probe_after=100, cooldown=0.0)
    assert adaptive.cap == 16
    synth = ToneSynthesizer()
    synth.on_text(
        TEXT,
        ServerError("busy", status=503),
        StreamCut("cut"),
        RateLimited("slow down", retry_after=0.001),
        RateLimited("slow down", retry_after=0.001),
        BadRequest("unknown speaker", status=400),
    )

    _, attempts = await failing(synth, BadRequest, limits=adaptive)

    assert len(attempts) == 5
    # Two 429s, each halving the cap (no cool-down); the 5xx, the cut and the 400 say nothing.
    assert adaptive.cap == 4
