"""Presets fill what their level of the manifest does not write; the nearest say wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.acx import CEILING_DBTP, LEAD_PAUSE_MS, TAIL_PAUSE_MS, TARGET_LUFS
from pipeline.errors import ManifestError
from pipeline.manifest import load_manifest
from pipeline.plan import build_plan


def manifest(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "book.yaml"
    path.write_text(f"job: book\noutput: out\n{body}", encoding="utf-8")
    return path


def test_acx_fills_rate_format_bitrate_loudness_and_room_tone(tmp_path: Path) -> None:
    job = load_manifest(
        manifest(tmp_path, "defaults: {preset: acx}\nscripts:\n  - {id: ch1, text: Hello.}\n")
    )
    voice = job.scripts[0].voice
    assert (voice.samplingRate, voice.formats, voice.mp3_bitrate) == (44100, ("mp3",), "192k")
    assert (voice.loudness_lufs, voice.true_peak_db) == (TARGET_LUFS, CEILING_DBTP)
    script = build_plan(job).scripts[0]
    assert script.lead_pause_ms == LEAD_PAUSE_MS
    assert script.segments[-1].pause_after_ms == TAIL_PAUSE_MS
    assert script.output.loudness_lufs == TARGET_LUFS
    assert script.output.true_peak_db == CEILING_DBTP


def test_settings_written_beside_a_preset_win_and_a_scripts_preset_beats_defaults(
    tmp_path: Path,
) -> None:
    job = load_manifest(
        manifest(
            tmp_path,
            "defaults: {preset: acx, loudness_lufs: -21, formats: [mp3, wav]}\n"
            "scripts:\n"
            "  - {id: ch1, text: Hello.}\n"
            "  - {id: promo, text: Hello., preset: podcast}\n"
            "  - {id: own, text: Hello., preset: podcast, true_peak_db: -2}\n",
        )
    )
    ch1, promo, own = (s.voice for s in job.scripts)
    assert (ch1.loudness_lufs, ch1.formats, ch1.true_peak_db) == (-21, ("mp3", "wav"), -3.5)
    assert (promo.loudness_lufs, promo.true_peak_db) == (-16, -1)
    assert promo.samplingRate == 44100  # inherited from the defaults' acx
    assert (own.loudness_lufs, own.true_peak_db) == (-16, -2)


def test_a_pause_marker_longer_than_the_lead_or_tail_wins(tmp_path: Path) -> None:
    job = load_manifest(
        manifest(
            tmp_path,
            "defaults: {lead_pause_ms: 500, tail_pause_ms: 1000}\n"
            "scripts:\n  - {id: a, text: '<2000> Hello there. <3000>'}\n"
            "  - {id: b, text: 'Hello there.'}\n",
        )
    )
    a, b = build_plan(job).scripts
    assert (a.lead_pause_ms, a.segments[-1].pause_after_ms) == (2000, 3000)
    assert (b.lead_pause_ms, b.segments[-1].pause_after_ms) == (500, 1000)


def test_an_unknown_preset_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"defaults\.preset.*'acx' or 'podcast'"):
        load_manifest(
            manifest(tmp_path, "defaults: {preset: radio}\nscripts:\n  - {id: a, text: Hi.}\n")
        )
