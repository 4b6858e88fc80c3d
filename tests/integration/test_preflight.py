"""The preflight with our own synthesizer and a real job table: which voices it asks about, what
each answer makes of the run, and how its requests are counted."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

from pipeline.errors import InputError, RimeBatchError, Unreachable
from pipeline.plan import JobPlan
from pipeline.preflight import PROBE_TEXT, Probe, check, probes_for, record
from pipeline.retry import RetryPolicy
from pipeline.rime.errors import (
    AuthError,
    BadRequest,
    ConnectError,
    RateLimited,
    ServerError,
    StreamCut,
)
from pipeline.rime.params import VoiceParams
from pipeline.store import open_database
from tests.fixtures.jobs import VOICE, plan_of, segment_row
from tests.fixtures.jobs import record as record_job
from tests.fixtures.synthesizers import ToneSynthesizer

URL = "http://rime.invalid/v1/rime-tts"
QUICK = RetryPolicy(max_attempts=3, max_rate_limited=3, initial_wait=0.0, max_wait=0.0, jitter=0.0)
OTHER = VoiceParams(speaker="astra", model_id="arcana")


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Engine]:
    engine = open_database(sqlite_url)
    try:
        yield engine
    finally:
        engine.dispose()


def two_voices(tmp_path: Path) -> JobPlan:
    """Four scripts of two segments: cove, astra, cove, astra."""
    plan = plan_of(str(tmp_path), [[f"Script {s} line {i}." for i in range(2)] for s in range(4)])
    scripts = tuple(
        replace(script, params=OTHER) if i % 2 else script for i, script in enumerate(plan.scripts)
    )
    return replace(plan, scripts=scripts)


def test_one_probe_per_voice_at_its_first_segment_to_send(tmp_path: Path) -> None:
    plan = two_voices(tmp_path)
    done = {plan.scripts[0].segments[0].cache_key, plan.scripts[1].segments[0].cache_key}
    done |= {s.cache_key for s in plan.scripts[3].segments}

    probes = probes_for(plan, lambda segment: segment.cache_key in done)

    assert probes == [
        Probe(VOICE, 0, "script-0", 1, scripts=2),  # script-2 needs requests too
        Probe(OTHER, 1, "script-1", 1, scripts=1),  # script-3 is all cached
    ]


def test_a_voice_whose_segments_are_all_cached_is_not_asked_about(tmp_path: Path) -> None:
    plan = two_voices(tmp_path)
    assert probes_for(plan, lambda segment: True) == []


async def test_a_voice_rime_knows_costs_one_character_counted_where_it_belongs(
    tmp_path: Path, db: Engine
) -> None:
    plan = two_voices(tmp_path)
    job = record_job(db, plan)
    synth = ToneSynthesizer()
    synth.on_text(PROBE_TEXT, ServerError("busy", status=503), StreamCut("cut"))

    sent = await check(
        synth, probes_for(plan, lambda _: False), url=URL, manifest="m.yaml", policy=QUICK
    )
    record(db, job.job_id, sent)

    # cove: a 503, a cut stream (generated, so billed), then the answer; astra: the answer.
    assert synth.texts() == [PROBE_TEXT] * 4
    first, second = segment_row(db, job.segments[0][0]), segment_row(db, job.segments[1][0])
    assert (first.attempts, first.billed_chars) == (3, 2 * len(PROBE_TEXT))
    assert (second.attempts, second.billed_chars) == (1, len(PROBE_TEXT))
    assert first.state == second.state == "pending"


async def test_no_answer_at_all_fails_after_the_few_quick_tries(tmp_path: Path) -> None:
    synth = ToneSynthesizer(default=ConnectError("cannot connect: connection refused"))

    with pytest.raises(Unreachable) as raised:
        await check(
            synth,
            probes_for(two_voices(tmp_path), lambda _: False),
            url="http://user:pw@127.0.0.1:9/v1/rime-tts",
            manifest="m.yaml",
            policy=QUICK,
        )

    assert len(synth.requests) == QUICK.max_attempts  # then nothing more, for any voice
    assert str(raised.value).startswith("cannot reach Rime at http://127.0.0.1:9/v1/rime-tts")
    assert "pw" not in str(raised.value)


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param([RateLimited("busy")] * 3, id="429s"),
        pytest.param([ServerError("down", status=502)] * 3, id="5xx"),
        pytest.param([ServerError("down", status=502), ConnectError("gone")] * 2, id="went away"),
    ],
)
async def test_a_rime_that_answers_without_audio_lets_the_job_start(
    tmp_path: Path, answers: list[Exception]
) -> None:
    plan = plan_of(str(tmp_path), [["One line."]])
    synth = ToneSynthesizer()
    synth.on_text(PROBE_TEXT, *answers)

    [(_, sent)] = await check(
        synth, probes_for(plan, lambda _: False), url=URL, manifest="m.yaml", policy=QUICK
    )

    assert len(sent) == len(synth.requests) <= len(answers)
    assert not any(one.billed for one in sent)


@pytest.mark.parametrize(
    ("refusal", "error", "words"),
    [
        (AuthError("invalid key", status=401), RimeBatchError, "refused the API key"),
        (BadRequest("unknown speaker 'astra'", status=400), InputError, "scripts[1].speaker"),
        (BadRequest("lang 'fra' is not spoken", status=400), InputError, "scripts[1].lang"),
    ],
)
async def test_a_refusal_is_one_message_and_asks_nothing_more(
    tmp_path: Path, refusal: Exception, error: type[Exception], words: str
) -> None:
    plan = two_voices(tmp_path)
    synth = ToneSynthesizer()
    synth.on_call(2, refusal)  # the second voice's probe

    with pytest.raises(error) as raised:
        await check(
            synth, probes_for(plan, lambda _: False), url=URL, manifest="m.yaml", policy=QUICK
        )

    assert len(synth.requests) == 2
    assert words in str(raised.value)
    assert "\n" not in str(raised.value)
