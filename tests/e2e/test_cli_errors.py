"""Bad input gets one clear message naming where it is, exit code 2, and no traceback; nothing is
synthesized and nothing already rendered is lost."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from rime_local.server import RunningEngine
from tests.fixtures.cli import Cli, CliResult

EngineFactory = Callable[..., RunningEngine]
KEY = "rk-e2e-errors-5a1f09c2"

HEAD = "job: broken\noutput: out\nscripts:\n"
GOOD = HEAD + "  - id: hello\n    text: Hello there.\n"


def one_message(result: CliResult) -> str:
    """The single error line of a failed command, after checking how it failed."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result
    assert result.stdout == "", result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result
    assert lines[0].startswith("error: "), result
    return lines[0]


# name -> (files to write, command, fragments the message must contain)
CASES: dict[str, tuple[dict[str, str], tuple[str, ...], tuple[str, ...]]] = {
    "yaml syntax": (
        {"jobs.yaml": HEAD + '  - id: a\n    text: "never closed\n  - id: b\n'},
        ("render", "jobs.yaml"),
        ("jobs.yaml:7:", "YAML syntax error", "starts on line 5"),
    ),
    "unknown key": (
        {"jobs.yaml": GOOD + "  - id: b\n    text: Hi.\n    sped: 1.2\n"},
        ("render", "jobs.yaml"),
        ("jobs.yaml:8:", "scripts[1].sped", "did you mean 'speed'"),
    ),
    "missing text": (
        {"jobs.yaml": GOOD + "  - id: b\n    speaker: cove\n"},
        ("render", "jobs.yaml"),
        ("jobs.yaml:6:", "scripts[1].text", "text_file"),
    ),
    "duplicate id": (
        {"jobs.yaml": GOOD + "  - id: Hello\n    text: Again.\n"},
        ("render", "jobs.yaml"),
        ("jobs.yaml:6:", "scripts[1].id", "first at line 4"),
    ),
    "unsafe id": (
        {"jobs.yaml": HEAD + "  - id: ../../etc/cron.d/x\n    text: Hi.\n"},
        ("render", "jobs.yaml"),
        ("jobs.yaml:4:", "scripts[0].id", "'..'"),
    ),
    "bad sampling rate": (
        {"jobs.yaml": GOOD + "  - id: b\n    text: Hi.\n    samplingRate: 96000\n"},
        ("render", "jobs.yaml"),
        ("jobs.yaml:8:", "scripts[1].samplingRate", "96000", "between 4000 and 44100"),
    ),
    "missing text_file": (
        {"jobs.yaml": GOOD + "  - id: b\n    text_file: chapters/one.txt\n"},
        ("render", "jobs.yaml"),
        ("jobs.yaml:7:", "scripts[1].text_file", "'chapters/one.txt' does not exist"),
    ),
    "text_file outside the folder": (
        {
            "job/jobs.yaml": HEAD + "  - id: a\n    text_file: ../private.txt\n",
            "private.txt": "Not for this job.",
        },
        ("render", "job/jobs.yaml"),
        ("jobs.yaml:5:", "scripts[0].text_file", "outside the manifest's folder"),
    ),
    "malformed markup": (
        {"jobs.yaml": GOOD + "  - id: b\n    text: |\n      Fine.\n      Then [very slow.\n"},
        ("render", "jobs.yaml"),
        ("jobs.yaml:7:", "scripts[1].text", "'['", "line 2, column 6"),
    ),
    "csv bad row": (
        {"jobs.csv": "id,text,speed\na,Hello.,1.0\nb,World.,fast\n"},
        ("render", "jobs.csv", "--output", "out"),
        ("jobs.csv:3:", "row 2", "speed", "'fast'"),
    ),
    "no such manifest": ({}, ("render", "nowhere.yaml"), ("nowhere.yaml", "does not exist")),
    "segment of a missing file": ({}, ("segment", "gone.txt"), ("gone.txt", "No such file")),
    "status of an unknown job": ({}, ("status", "abcdef012345"), ("no job 'abcdef012345'",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_clear_message(cli: Cli, tmp_path: Path, case: str) -> None:
    files, command, fragments = CASES[case]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")

    message = one_message(cli.run(*command))

    for fragment in fragments:
        assert fragment in message, message
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "job" / "out").exists()


def test_a_bad_script_anywhere_stops_the_render_before_any_request(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    (tmp_path / "jobs.yaml").write_text(
        GOOD + "  - id: b\n    text: Then [very slow.\n  - id: c\n    text: Bye.\n"
    )

    message = one_message(run.run("render", "jobs.yaml"))

    assert "scripts[1].text" in message
    assert engine.metrics()["requests"] == 0
    assert not (tmp_path / "out").exists()
    listed = run.run("status")
    assert listed.returncode == 0, listed
    assert "broken" not in listed.stdout  # no job was recorded


def test_a_bad_edit_loses_nothing_already_rendered(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(GOOD + "  - id: bye\n    text: Goodbye now.\n")
    first = run.run("render", manifest)
    assert first.returncode == 0, first
    out = tmp_path / "out"
    before = {p: hashlib.sha256(p.read_bytes()).digest() for p in out.rglob("*") if p.is_file()}
    assert {p.relative_to(out).as_posix() for p in before} >= {
        "hello.wav",
        "bye.wav",
        "results.json",
    }

    manifest.write_text(GOOD + "  - id: bye\n    text: Goodbye now.\n    formats: [flac]\n")
    engine.reset_metrics()
    message = one_message(run.run("render", manifest))

    assert "scripts[1].formats" in message
    assert engine.metrics()["requests"] == 0
    after = {p: hashlib.sha256(p.read_bytes()).digest() for p in out.rglob("*") if p.is_file()}
    assert after == before
