"""A voice change without editing: `--set` and `--voice-map` on real `rime-batch` runs.

Each test renders a manifest the way a user does, against an engine of its own, and checks which
voice the engine was asked for (its `/metrics` count valid requests by `modelId/speaker`), that
the audio is not the original voice's, and that the job records what it was asked to change.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rime_local.server import RunningEngine
from tests.e2e.test_cli_errors import one_message
from tests.e2e.test_render import job_id_of, write
from tests.fixtures.cli import Cli, CliResult, probe

EngineFactory = Callable[..., RunningEngine]

# welcome takes the defaults' speaker, hours names the same speaker itself, menu another.
CLINIC = """\
job: clinic
output: out
defaults:
  speaker: cove
  samplingRate: 8000
  formats: [wav-mulaw]
scripts:
  - id: welcome
    text: Thank you for calling Riverside Clinic.
  - id: hours
    speaker: cove
    text: We are open from eight to six.
  - id: menu
    speaker: marsh
    text: For appointments, press one.
"""

# What a contact centre keeps in a spreadsheet: no rate or format on any row, a blank speaker
# cell where the job's voice speaks.
PROMPTS = """\
id,text,speaker
welcome,Thank you for calling Riverside Clinic.,
hours,We are open from eight to six.,cove
menu,"For appointments, press one.",marsh
"""
# The job-wide defaults of those rows, in a YAML manifest that names the CSV.
LINKED = """\
job: clinic
output: out
defaults: {speaker: cove, samplingRate: 8000, formats: [wav-mulaw]}
scripts_csv: prompts.csv
"""
# The same defaults given to the bare CSV on the command line.
CSV_DEFAULTS = ("--set", "samplingRate=8000", "--set", "formats=wav-mulaw")
SCRIPTS = ("welcome", "hours", "menu")


def similarity(a: Path, b: Path) -> float:
    """Correlation of two renders' samples: near 1 for one voice saying a text twice, near 0
    for two voices (their timing and pitch differ)."""
    x = probe(a).samples.astype(np.float64)
    y = probe(b).samples.astype(np.float64)
    n = min(len(x), len(y))
    return float(np.corrcoef(x[:n], y[:n])[0, 1])


def voices(engine: RunningEngine) -> dict[str, int]:
    """Requests the engine took, by the voice they asked for."""
    counts: dict[str, int] = engine.metrics()["voices"]
    return counts


def rendered(run: Cli, *args: str | Path) -> CliResult:
    result = run.run("render", *args)
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr, result
    return result


def status_of(run: Cli, job_id: str) -> str:
    shown = run.run("status", job_id)
    assert shown.returncode == 0, shown
    return shown.stdout


def manifest_in(folder: Path, kind: str) -> tuple[Path, tuple[str, ...]]:
    """The clinic's manifest as a YAML, a CSV or a YAML naming a CSV; the flags the CSV alone
    needs for the same defaults."""
    if kind == "yaml":
        return write(folder, CLINIC), ()
    csv = write(folder, PROMPTS, "prompts.csv")
    if kind == "csv":
        return csv, CSV_DEFAULTS
    return write(folder, LINKED, "clinic.yaml"), ()


def outputs(folder: Path) -> dict[str, Path]:
    return {script: folder / f"{script}.mulaw.wav" for script in SCRIPTS}


# One probe per voice (the preflight's), then one request per script.
CASES = {
    "yaml: --set speaker": (
        "yaml",
        ("--set", "speaker=mesa"),
        {"mistv2/mesa": 2, "mistv2/cove": 2, "mistv2/marsh": 2},  # hours keeps its own
        {"welcome"},
    ),
    "yaml: --voice-map": (
        "yaml",
        ("--voice-map", "cove=mesa"),
        {"mistv2/mesa": 3, "mistv2/marsh": 2},
        {"welcome", "hours"},
    ),
    "yaml: another model, every speaker renamed": (
        "yaml",
        (
            *("--set", "speaker=luna", "--set", "modelId=arcana"),
            *("--voice-map", "cove=astra", "--voice-map", "marsh=orion"),
        ),
        {"arcana/luna": 2, "arcana/astra": 2, "arcana/orion": 2},
        {"welcome", "hours", "menu"},
    ),
    "csv: --set speaker": (
        "csv",
        ("--set", "speaker=mesa"),
        {"mistv2/mesa": 2, "mistv2/cove": 2, "mistv2/marsh": 2},  # a blank cell takes it
        {"welcome"},
    ),
    "csv: --voice-map": (
        "csv",
        ("--voice-map", "cove=mesa"),
        {"mistv2/mesa": 3, "mistv2/marsh": 2},
        {"welcome", "hours"},
    ),
    "yaml naming a csv: --voice-map": (
        "linked",
        ("--voice-map", "marsh=bayou"),
        {"mistv2/cove": 3, "mistv2/bayou": 2},
        {"menu"},
    ),
}


@pytest.mark.parametrize(("kind", "flags", "asked", "changed"), CASES.values(), ids=list(CASES))
def test_a_voice_change_without_editing_the_manifest(
    cli: Cli,
    engine_factory: EngineFactory,
    tmp_path: Path,
    kind: str,
    flags: tuple[str, ...],
    asked: dict[str, int],
    changed: set[str],
) -> None:
    engine = engine_factory()
    run = cli.using(engine=engine)
    manifest, defaults = manifest_in(tmp_path, kind)
    written = manifest.read_bytes()
    first = rendered(run, manifest, *defaults)
    original = tmp_path / "out" / ("prompts" if kind == "csv" else "")
    engine.reset_metrics()

    result = rendered(run, manifest, "-o", "changed", *defaults, *flags)

    assert voices(engine) == asked
    before, after = outputs(original), outputs(tmp_path / "changed")
    for script in SCRIPTS:
        audio = probe(after[script])
        # The CSV's job-wide defaults reached every row.
        assert (audio.codec, audio.sample_rate) == ("pcm_mulaw", 8000), script
    for script in changed:
        assert similarity(before[script], after[script]) < 0.5, script
    assert manifest.read_bytes() == written
    # The job says what it was asked to change, as it was given; the first render asked none.
    assert " ".join(map(shlex.quote, (*defaults, *flags))) in status_of(run, job_id_of(result))
    shown_first = status_of(run, job_id_of(first))
    assert ("--set" in shown_first, "--voice-map" in shown_first) == (bool(defaults), False)


def test_resume_keeps_the_recorded_overrides(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory()
    run = cli.using(engine=engine)
    manifest, _ = manifest_in(tmp_path, "yaml")
    saved = run.run("plan", manifest, "--save", "--voice-map", "cove=mesa")
    assert saved.returncode == 0, saved
    found = re.search(r"saved as job ([0-9a-f]{12})", saved.stdout)
    assert found, saved
    job_id = found.group(1)

    resumed = run.run("resume", job_id)

    assert resumed.returncode == 0, resumed
    assert voices(engine) == {"mistv2/mesa": 3, "mistv2/marsh": 2}
    assert "--voice-map cove=mesa" in status_of(run, job_id)
    # A recorded job is sent as planned: a change to it is a new job, from the manifest.
    refused = one_message(run.run("submit", job_id, "--set", "speaker=luna"))
    assert "--set and --voice-map change a manifest's plan" in refused


BAD = {
    "out of range": (
        ("render", "jobs.yaml", "--set", "speed=9"),
        "error: --set speed=9: Input should be less than or equal to 4 (got 9)",
    ),
    "unknown setting": (
        ("plan", "jobs.yaml", "--set", "sped=1.2"),
        "error: --set sped=1.2: unknown setting 'sped' (did you mean 'speed'?)",
    ),
    "no value": (
        ("render", "jobs.yaml", "--set", "speed"),
        "error: --set speed: expected KEY=VALUE, e.g. --set speaker=luna",
    ),
    "unknown model, submitted": (
        ("submit", "jobs.yaml", "--set", "modelId=mistv9"),
        "error: --set modelId=mistv9: unknown modelId 'mistv9'",
    ),
    "a speaker no script uses": (
        ("render", "jobs.yaml", "--voice-map", "cvoe=luna"),
        "error: --voice-map cvoe=luna: no script speaks with 'cvoe' (this job's speakers: "
        "cove, marsh)",
    ),
    "a rate the model refuses, on a csv": (
        ("render", "prompts.csv", "--set", "samplingRate=7"),
        "error: --set samplingRate=7: 7 is not a sampling rate mistv2 accepts",
    ),
}


@pytest.mark.parametrize(("args", "message"), BAD.values(), ids=list(BAD))
def test_a_bad_override_is_one_line_naming_it_and_sends_nothing(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    engine = engine_factory()
    run = cli.using(engine=engine)
    write(tmp_path, CLINIC)
    write(tmp_path, PROMPTS, "prompts.csv")

    line = one_message(run.run(*args))

    assert line.startswith(message), line
    assert engine.metrics()["requests"] == 0
    assert not (tmp_path / "out").exists()
