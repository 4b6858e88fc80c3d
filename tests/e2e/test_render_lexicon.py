"""A pronunciation lexicon end to end: `rime-batch render` against the local engine, twice.

The engine's counters say what was sent: an edited entry re-synthesizes only the segments
whose text it changes, and the segment holding phonemes is the one sent with
phonemizeBetweenBrackets (the engine speaks it through espeak's phoneme input).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from pipeline.preflight import PROBE_TEXT
from pipeline.store import create_engine_for
from rime_local.server import RunningEngine
from tests.e2e.test_render import job_id_of, write
from tests.fixtures.cli import Cli

KEY = "rk-e2e-lexicon-7a41c09d"
RATE = 8000

MANIFEST = """\
job: lexicon
output: out
lexicon: lexicon.yaml
defaults:
  speaker: cove
  modelId: mistv2
  samplingRate: 8000
  formats: [wav-mulaw]
  max_chars: 40
scripts:
  - id: welcome
    text: Welcome to Rime. Press one for billing.
  - id: doctor
    text: Doctor Okafor will see you. Our SQL team is here.
"""
LEXICON = """\
Rime: "{r1Ym}"
SQL: sequel
Okafor: oh KAH for
"""
# The segments' request texts with LEXICON applied, in plan order.
SEGMENTS = [
    "Welcome to {r1Ym}.",
    "Press one for billing.",
    "Doctor oh KAH for will see you.",
    "Our sequel team is here.",
]

EngineFactory = Callable[..., RunningEngine]


def segments(database_url: str, job_id: str) -> list[dict[str, Any]]:
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT text, phonemes, cache_key, audio_seconds FROM segments "
                    "WHERE job_id = :job ORDER BY script_pk, " + '"index"'
                ),
                {"job": job_id},
            ).mappings()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def engine_seconds(engine: RunningEngine, text: str, **options: object) -> float:
    """Seconds of the engine's own render of `text`, as the job's voice."""
    body = {"text": text, "speaker": "cove", "modelId": "mistv2", "samplingRate": RATE, **options}
    response = httpx.post(
        engine.http_url,
        json=body,
        headers={"Accept": "audio/pcm", "Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    response.raise_for_status()
    return len(response.content) / 2 / RATE


def test_an_edited_entry_re_synthesizes_only_the_segments_it_changes(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    manifest = write(tmp_path, MANIFEST)
    lexicon = write(tmp_path, LEXICON, "lexicon.yaml")

    planned = run.run("plan", manifest)
    assert planned.returncode == 0, planned
    assert "lexicon" in planned.stdout  # the substitutions column

    first = run.run("render", manifest)
    assert first.returncode == 0, first
    assert engine.metrics()["requests"] == 1 + len(SEGMENTS)  # the preflight, every segment
    rows = segments(cli.database_url, job_id_of(first))
    assert [r["text"] for r in rows] == SEGMENTS
    assert [bool(r["phonemes"]) for r in rows] == [True, False, False, False]

    # The phoneme segment was sent with phonemizeBetweenBrackets: its audio is the engine's
    # render with the switch on, which reads the braces as phonemes, not as letters and digits.
    with_switch = engine_seconds(engine, SEGMENTS[0], phonemizeBetweenBrackets=True)
    without = engine_seconds(engine, SEGMENTS[0])
    assert abs(with_switch - without) > 0.2
    assert rows[0]["audio_seconds"] == pytest.approx(with_switch, abs=0.02)

    lexicon.write_text(LEXICON.replace("oh KAH for", "oh KAY for"), encoding="utf-8")
    engine.reset_metrics()
    edited = run.run("render", manifest)

    assert edited.returncode == 0, edited
    changed = "Doctor oh KAY for will see you."
    metrics = engine.metrics()
    assert metrics["requests"] == 1 + 1  # the preflight, then the one segment the entry changed
    assert metrics["characters"] == len(changed) + len(PROBE_TEXT)
    again = segments(cli.database_url, job_id_of(edited))
    assert [r["text"] for r in again] == [SEGMENTS[0], SEGMENTS[1], changed, SEGMENTS[3]]
    kept = [0, 1, 3]
    assert [again[i]["cache_key"] for i in kept] == [rows[i]["cache_key"] for i in kept]

    # A phoneme entry changed, Okafor's alias back as it was (cached from the first render):
    # only the phoneme segment is sent.
    lexicon.write_text(LEXICON.replace("{r1Ym}", "{r1im}"), encoding="utf-8")
    engine.reset_metrics()
    third = run.run("render", manifest)
    assert third.returncode == 0, third
    metrics = engine.metrics()
    assert metrics["requests"] == 1 + 1
    assert metrics["characters"] == len("Welcome to {r1im}.") + len(PROBE_TEXT)
