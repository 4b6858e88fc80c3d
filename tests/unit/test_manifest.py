"""Manifests: what loads, what each setting resolves to, and where every problem is reported."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ManifestError
from pipeline.manifest import JobSpec, Voice, load_manifest
from pipeline.manifest.paths import PathProblem, check_script_id, normalize_text
from pipeline.plan import plan_manifest

REPO = Path(__file__).resolve().parents[2]
_ONE_SCRIPT = "scripts:\n  - id: a\n    text: Hello there. How are you?\n"


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def failure(path: Path, **kwargs: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, **kwargs)
    return info.value


def located(err: ManifestError) -> tuple[int | None, int | None, str | None, str]:
    return err.line, err.row, err.field, err.message


# --- what loads ------------------------------------------------------------------------------


def test_the_example_job_loads() -> None:
    job = load_manifest(REPO / "jobs.example.yaml")

    assert job.name == "clinic-demo"
    assert job.destination == str(REPO / "out" / "example")
    ivr = [s for s in job.scripts if s.id.startswith("ivr/")]
    assert len(ivr) >= 4
    for script in ivr:
        assert script.voice.formats == ("wav-mulaw",)
        assert script.voice.effective_sampling_rate == 8000
        assert "<" in script.text  # pause markup
    assert any("555-0100" in s.text for s in ivr)
    assert any("3:30" in s.text for s in ivr)
    (chapter,) = [s for s in job.scripts if s.text_file]
    assert chapter.voice.formats == ("mp3",)
    assert chapter.voice.effective_sampling_rate == 22050
    assert chapter.text_file is not None
    file_text = (REPO / chapter.text_file).read_text(encoding="utf-8")
    assert chapter.text == normalize_text(file_text)
    assert 2500 <= len(chapter.text) <= 4000
    assert chapter.text.count("\n\n") >= 5  # several paragraphs


def test_a_minimal_yaml_gets_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "my prompts.yaml", "scripts:\n  - id: hello\n    text: '  Hi there. '\n")

    job = load_manifest(path)

    assert job.name == "my-prompts"
    assert job.manifest == str(path)
    assert job.destination == str(tmp_path / "out" / "my-prompts")
    assert job.defaults == Voice()
    (script,) = job.scripts
    assert (script.id, script.text, script.text_file) == ("hello", "Hi there.", None)
    assert script.voice == Voice()
    assert script.voice.effective_sampling_rate == 22050  # mistv2's default
    assert (script.source.file, script.source.line, script.source.field) == (
        str(path),
        2,
        "scripts[0]",
    )
    assert str(script.source) == f"{path}:2"
    assert (script.text_source.line, script.text_source.field) == (3, "scripts[0].text")
    err = script.text_source.error("unclosed bracket at character 3")
    assert str(err) == f"{path}:3: scripts[0].text: unclosed bracket at character 3"


def test_scripts_override_any_default(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "job.yaml",
        """\
job: clinic
output: renders/clinic
defaults:
  speaker: cove
  samplingRate: 8000
  formats: [wav-mulaw]
  pause_ms: 300
scripts:
  - id: a
    text: First.
  - id: b/c
    text: |
      Second.

      Paragraph two.
    modelId: arcana
    samplingRate: 24000
    formats: mp3|ogg
    speed: 1.25
    inlineSpeedAlpha: "3, 0.5"
    mp3_bitrate: 96
    temperature: 0.5
""",
    )

    job = load_manifest(path)

    assert job.name == "clinic"
    assert job.destination == str(tmp_path / "renders" / "clinic")
    a, b = job.scripts
    assert a.voice.model_dump() == {**Voice().model_dump(), **job.defaults.model_dump()}
    assert (a.voice.samplingRate, a.voice.formats, a.voice.pause_ms) == (8000, ("wav-mulaw",), 300)
    assert b.id == "b/c"
    assert b.text == "Second.\n\nParagraph two."
    assert b.voice.modelId == "arcana"
    assert b.voice.samplingRate == 24000
    assert b.voice.formats == ("mp3", "ogg")
    assert b.voice.speed == 1.25
    assert b.voice.inlineSpeedAlpha == (3.0, 0.5)
    assert b.voice.mp3_bitrate == "96k"
    assert b.voice.temperature == 0.5
    # Inherited: the defaults still apply where the script is silent.
    assert (b.voice.speaker, b.voice.pause_ms) == ("cove", 300)
    assert job.defaults.modelId == "mistv2"
    assert b.source.line == 11


def test_text_file_is_read_relative_to_the_manifest(tmp_path: Path) -> None:
    write(tmp_path, "chapters/one.txt", "\ufeffLine one.\r\n\r\nLine two.\r\n")
    path = write(tmp_path, "job.yml", "scripts:\n  - id: one\n    text_file: chapters/one.txt\n")

    (script,) = load_manifest(path).scripts

    assert script.text == "Line one.\n\nLine two."
    assert script.text_file == "chapters/one.txt"
    assert (script.text_source.line, script.text_source.field) == (3, "scripts[0].text_file")


def test_a_symlink_that_stays_inside_the_folder_is_fine(tmp_path: Path) -> None:
    write(tmp_path, "real.txt", "Hello.")
    (tmp_path / "alias.txt").symlink_to(tmp_path / "real.txt")
    path = write(tmp_path, "job.yaml", "scripts:\n  - {id: a, text_file: alias.txt}\n")

    assert load_manifest(path).scripts[0].text == "Hello."


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("elsewhere/out", "{cwd}/elsewhere/out"),
        ("s3://my-bucket/renders/clinic/", "s3://my-bucket/renders/clinic"),
        ("s3://my-bucket", "s3://my-bucket"),
    ],
)
def test_the_output_override_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: str, expected: str
) -> None:
    path = write(tmp_path, "m/job.yaml", "output: out/x\nscripts:\n  - {id: a, text: Hi.}\n")
    monkeypatch.chdir(tmp_path)

    job = load_manifest(path, output=override)

    assert job.destination == expected.format(cwd=tmp_path)


def test_an_s3_output_in_the_manifest_is_kept(tmp_path: Path) -> None:
    path = write(
        tmp_path, "job.yaml", "output: s3://bucket.name/a/b\nscripts: [{id: a, text: x}]\n"
    )

    assert load_manifest(path).destination == "s3://bucket.name/a/b"


def test_merge_keys_and_anchors_work_and_keep_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "job.yaml",
        """\
x-phone: &phone
  samplingRate: 8000
  speed: 9
scripts:
  - <<: *phone
    id: a
    text: Hi.
""",
    )

    err = failure(path)

    # The unknown top-level key comes first; the anchor's own problem is located at the anchor.
    assert located(err) == (1, None, "x-phone", "unknown key 'x-phone'")
    path.write_text(path.read_text().replace("x-phone: &phone", "defaults: &phone"))
    err = failure(path)
    assert located(err) == (
        3,
        None,
        "defaults.speed",
        "Input should be less than or equal to 4 (got 9)",
    )


# --- CSV --------------------------------------------------------------------------------------


def test_a_csv_manifest(tmp_path: Path) -> None:
    content = (
        "\ufeffid, text ,speaker,samplingRate,formats,speed\r\n"
        'welcome,"Hello, and welcome.",,8000,mp3|wav,\r\n'
        "\r\n"
        'menu,"Press 1.\r\nPress 2.",astra,,,1.5\r\n'
        ",,,,,\r\n"
    )
    path = write(tmp_path, "prompts.csv", content.encode("utf-8"))

    job = load_manifest(path)

    assert job.name == "prompts"
    assert job.destination == str(tmp_path / "out" / "prompts")
    welcome, menu = job.scripts
    assert welcome.text == "Hello, and welcome."
    assert welcome.voice.speaker == "cove"  # an empty cell uses the default
    assert welcome.voice.samplingRate == 8000
    assert welcome.voice.formats == ("mp3", "wav")
    assert (welcome.source.line, welcome.source.row, welcome.source.field) == (2, 1, None)
    assert menu.text == "Press 1.\nPress 2."
    assert (menu.voice.speaker, menu.voice.speed, menu.voice.formats) == ("astra", 1.5, ("wav",))
    assert (menu.source.line, menu.source.row) == (4, 3)
    assert str(menu.source) == f"{path}:4 (row 3)"
    err = menu.text_source.error("unclosed bracket at character 3")
    assert str(err) == f"{path}:4: row 3: text: unclosed bracket at character 3"


def test_csv_errors_after_a_multi_line_cell_name_the_right_line_and_row(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", 'id,text,speed\na,"one\ntwo\nthree",1\nb,four,0\n')

    err = failure(path)

    assert located(err) == (
        5,
        2,
        "speed",
        "Input should be greater than or equal to 0.25 (got '0')",
    )
    assert str(err) == f"{path}:5: row 2: speed: {err.message}"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", (1, None, None, "the CSV file is empty; expected a header row with id,text")),
        ("id,text\n", (1, None, None, "the CSV file has a header but no rows")),
        (
            "id,speaker\na,cove\n",
            (1, None, None, "the header has no 'text' column; it must name at least id and text"),
        ),
        (
            "text,speed\nHi,1\n",
            (1, None, None, "the header has no 'id' column; it must name at least id and text"),
        ),
        (
            "id,text,sampling_rate\na,Hi,8000\n",
            (
                1,
                None,
                "sampling_rate",
                "unknown column 'sampling_rate' (did you mean 'samplingRate'?)",
            ),
        ),
        ("id,text,,speed\na,b,c,1\n", (1, None, None, "column 3 of the header has no name")),
        ("id,text,id\na,b,c\n", (1, None, "id", "column 'id' appears twice")),
        (
            "id,text\na,Hi\nb,Hi,extra\n",
            (3, 2, None, "the row has 3 cells but the header has 2 columns"),
        ),
        (
            "id,text,samplingRate\na,Hi,eight thousand\n",
            (
                2,
                1,
                "samplingRate",
                "Input should be a valid integer, unable to parse string as an integer "
                "(got 'eight thousand')",
            ),
        ),
        (
            "id,text,modelId,samplingRate\na,Hi,arcana,11025\n",
            (
                2,
                1,
                "samplingRate",
                "11025 is not a sampling rate arcana accepts: expected one of 8000, 16000, "
                "22050, 24000, 44100, 48000, 96000",
            ),
        ),
        (
            "id,text\nwelcome,Hi\nmenu,Press 1\nWelcome,Hello\n",
            (
                4,
                3,
                "id",
                "'Welcome' is used again (first at row 1, line 2); ids must differ in more "
                "than letter case",
            ),
        ),
        ("id,text\na,\n", (2, 1, "text", "needs a text or a text_file")),
        ('id,text\na,"unclosed\n', (2, None, None, "CSV syntax error: unexpected end of data")),
        (
            'id,text\na,"quoted"tail\n',
            (2, None, None, "CSV syntax error: ',' expected after '\"'"),
        ),
    ],
)
def test_csv_problems_are_located(
    tmp_path: Path, content: str, expected: tuple[int | None, int | None, str | None, str]
) -> None:
    path = write(tmp_path, "bad.csv", content)

    err = failure(path)

    assert err.file == str(path)
    assert located(err) == expected


# --- YAML problems ----------------------------------------------------------------------------

_OK = "scripts:\n  - id: a\n    text: Hi.\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "scripts:\n  - id: a\n    text: Hi: there\n",
            (3, None, None, "YAML syntax error: mapping values are not allowed here"),
        ),
        (
            'scripts:\n  - id: a\n    text: "open\n',
            (
                4,
                None,
                None,
                "YAML syntax error: found unexpected end of stream "
                "(while scanning a quoted scalar that starts on line 3)",
            ),
        ),
        ("", (1, None, None, "the manifest is empty")),
        ("# only a comment\n", (1, None, None, "the manifest is empty")),
        (
            "- id: a\n  text: Hi.\n",
            (
                1,
                None,
                None,
                "the top level must be a mapping with job, output, keep_releases, notify, "
                "defaults, scripts, scripts_csv, lexicon, book, "
                "not a list",
            ),
        ),
        (
            "hello\n",
            (
                1,
                None,
                None,
                "the top level must be a mapping with job, output, keep_releases, notify, "
                "defaults, scripts, scripts_csv, lexicon, book, "
                "not a single value ('hello')",
            ),
        ),
        (
            "scripts:\n  - !!python/object/apply:os.system [echo hi]\n",
            (
                2,
                None,
                None,
                "YAML tag '!!python/object/apply:os.system' is not allowed: a manifest holds "
                "plain data only (text, numbers, true/false, lists and mappings)",
            ),
        ),
        (
            "scrips:\n  - {id: a, text: Hi.}\n",
            (1, None, "scrips", "unknown key 'scrips' (did you mean 'scripts'?)"),
        ),
        (
            "defaults:\n  model: mistv3\n" + _OK,
            (2, None, "defaults.model", "unknown key 'model' (did you mean 'modelId'?)"),
        ),
        (
            _OK + "    speedAlpha: 0.8\n",
            (4, None, "scripts[0].speedAlpha", "unknown key 'speedAlpha' (did you mean 'speed'?)"),
        ),
        (
            _OK + "    txt_file: a.txt\n",
            (4, None, "scripts[0].txt_file", "unknown key 'txt_file' (did you mean 'text_file'?)"),
        ),
        (
            _OK + "    zzz: 1\n",
            (4, None, "scripts[0].zzz", "unknown key 'zzz'"),
        ),
        ("job: x\n", (1, None, None, "there is no 'scripts' list: add one script at least")),
        ("scripts: []\n", (1, None, "scripts", "must be a list with one script at least")),
        ("scripts:\n", (1, None, None, "there is no 'scripts' list: add one script at least")),
        ("scripts: {a: 1}\n", (1, None, "scripts", "must be a list with one script at least")),
        (
            "scripts:\n  - just a string\n",
            (2, None, "scripts[0]", "each script must be a mapping with an id and a text"),
        ),
        (
            "defaults: [speaker]\n" + _OK,
            (1, None, "defaults", "must be a mapping of settings (e.g. speaker: cove)"),
        ),
        (
            _OK + "    speed: 1.1\n    speed: 1.2\n",
            (
                5,
                None,
                "scripts[0].speed",
                "key 'speed' appears twice in the same mapping (first on line 4)",
            ),
        ),
        (
            _OK + "    1: x\n",
            (4, None, "scripts[0]", "key '1' must be text (put it in quotes)"),
        ),
        ("job: ''\n" + _OK, (1, None, "job", "must be a non-empty text")),
        ("job: [a]\n" + _OK, (1, None, "job", "must be a non-empty text")),
        (
            "output: https://example.com/x\n" + _OK,
            (
                1,
                None,
                "output",
                "'https://example.com/x': only local folders and s3://bucket/prefix are supported",
            ),
        ),
        (
            "output: s3://Bad_Bucket/x\n" + _OK,
            (
                1,
                None,
                "output",
                "'s3://Bad_Bucket/x' is not a valid S3 location; expected s3://bucket/prefix",
            ),
        ),
        (
            "output: s3://bucket/a/../b\n" + _OK,
            (
                1,
                None,
                "output",
                "'s3://bucket/a/../b' has an empty, '.' or '..' part in its prefix",
            ),
        ),
        (
            "output: 5\n" + _OK,
            (
                1,
                None,
                "output",
                "must be a folder (relative to the manifest) or s3://bucket/prefix",
            ),
        ),
    ],
)
def test_yaml_structure_problems_are_located(
    tmp_path: Path, content: str, expected: tuple[int | None, int | None, str | None, str]
) -> None:
    path = write(tmp_path, "job.yaml", content)

    err = failure(path)

    assert err.file == str(path)
    assert located(err) == expected


def _script(extra: str, head: str = "  - id: a\n    text: Hi.\n") -> str:
    return "defaults:\n  speaker: cove\nscripts:\n  - id: first\n    text: One.\n" + head + extra


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (_script("", "  - id: a\n"), (6, None, "scripts[1].text", "needs a text or a text_file")),
        (_script("", "  - id: a\n    text:\n"), (7, None, "scripts[1].text", "is empty")),
        (_script("", "  - id: a\n    text: '  \t '\n"), (7, None, "scripts[1].text", "is empty")),
        (
            _script("", "  - id: a\n    text: 12\n"),
            (7, None, "scripts[1].text", "must be text; put it in quotes"),
        ),
        (
            _script("    text_file: a.txt\n"),
            (8, None, "scripts[1].text_file", "give either text or text_file, not both"),
        ),
        (_script("", "  - text: Hi.\n"), (6, None, "scripts[1].id", "is required")),
        (
            _script("", "  - id: 010\n    text: Hi.\n"),
            (6, None, "scripts[1].id", "must be text, not a number; put it in quotes"),
        ),
        (
            _script("", "  - id: first\n    text: Again.\n"),
            (
                6,
                None,
                "scripts[1].id",
                "'first' is used again (first at line 4); ids must differ in more than letter case",
            ),
        ),
        (
            _script("    samplingRate: 2000\n"),
            (
                8,
                None,
                "scripts[1].samplingRate",
                "2000 is not a sampling rate mistv2 accepts: expected between 4000 and 44100",
            ),
        ),
        (
            _script("    modelId: arcana\n    samplingRate: 11025\n"),
            (
                9,
                None,
                "scripts[1].samplingRate",
                "11025 is not a sampling rate arcana accepts: expected one of 8000, 16000, "
                "22050, 24000, 44100, 48000, 96000",
            ),
        ),
        (
            _script("    modelId: mistv9\n"),
            (
                8,
                None,
                "scripts[1].modelId",
                "unknown modelId 'mistv9' (known: arcana, coda, mist, mistv2, mistv3)",
            ),
        ),
        (
            _script("    speed: 0\n"),
            (
                8,
                None,
                "scripts[1].speed",
                "Input should be greater than or equal to 0.25 (got 0)",
            ),
        ),
        (
            _script("    speed: 4.5\n"),
            (8, None, "scripts[1].speed", "Input should be less than or equal to 4 (got 4.5)"),
        ),
        (
            _script("    speed: .nan\n"),
            (8, None, "scripts[1].speed", "Input should be a finite number (got nan)"),
        ),
        (
            _script("    pause_ms: -1\n"),
            (
                8,
                None,
                "scripts[1].pause_ms",
                "Input should be greater than or equal to 0 (got -1)",
            ),
        ),
        (
            _script("    paragraph_pause_ms: -700\n"),
            (
                8,
                None,
                "scripts[1].paragraph_pause_ms",
                "Input should be greater than or equal to 0 (got -700)",
            ),
        ),
        (
            _script("    max_chars: 0\n"),
            (8, None, "scripts[1].max_chars", "Input should be greater than or equal to 1 (got 0)"),
        ),
        (
            _script("    max_chars: 501\n"),
            (
                8,
                None,
                "scripts[1].max_chars",
                "501 is more than mistv2 takes in one request: at most 500",
            ),
        ),
        (
            _script("    formats:\n      - mp3\n      - flac\n"),
            (
                10,
                None,
                "scripts[1].formats[1]",
                "Input should be 'wav', 'wav-mulaw', 'mulaw', 'mp3' or 'ogg' (got 'flac')",
            ),
        ),
        (
            _script("    formats: [mp3, mp3]\n"),
            (8, None, "scripts[1].formats", "lists mp3 more than once"),
        ),
        (
            _script("    formats: []\n"),
            (
                8,
                None,
                "scripts[1].formats",
                "Tuple should have at least 1 item after validation, not 0",
            ),
        ),
        (
            _script("    mp3_bitrate: 100k\n"),
            (
                8,
                None,
                "scripts[1].mp3_bitrate",
                "'100k' is not an mp3 bitrate: expected one of 32k, 40k, 48k, 56k, 64k, 80k, "
                "96k, 112k, 128k, 160k, 192k, 224k, 256k, 320k",
            ),
        ),
        (
            _script("    loudness_lufs: 3\n"),
            (
                8,
                None,
                "scripts[1].loudness_lufs",
                "Input should be less than or equal to -5 (got 3)",
            ),
        ),
        (
            _script("    inlineSpeedAlpha: [1.5, -2]\n"),
            (
                8,
                None,
                "scripts[1].inlineSpeedAlpha",
                "every inlineSpeedAlpha value must be between 0.25 and 4 (got -2)",
            ),
        ),
        (
            _script("    top_p: 1.5\n"),
            (8, None, "scripts[1].top_p", "Input should be less than or equal to 1 (got 1.5)"),
        ),
        (
            _script("    speaker: 7\n"),
            (8, None, "scripts[1].speaker", "Input should be a valid string (got 7)"),
        ),
        (
            _script("    pauseBetweenBrackets: maybe\n"),
            (
                8,
                None,
                "scripts[1].pauseBetweenBrackets",
                "Input should be a valid boolean, unable to interpret input (got 'maybe')",
            ),
        ),
    ],
)
def test_script_problems_are_located(
    tmp_path: Path, content: str, expected: tuple[int | None, int | None, str | None, str]
) -> None:
    path = write(tmp_path, "job.yaml", content)

    err = failure(path)

    assert err.file == str(path)
    assert located(err) == expected
    assert str(err) == f"{path}:{expected[0]}: {expected[2]}: {expected[3]}"


def test_the_earliest_problem_in_a_script_is_the_one_reported(tmp_path: Path) -> None:
    # pydantic lists speed's error first (field order); the file has pause_ms first.
    path = write(tmp_path, "job.yaml", _script("    pause_ms: -1\n    speed: 9\n", "  - id: a\n"))

    err = failure(path)

    assert (err.line, err.field) == (7, "scripts[1].pause_ms")


def test_a_problem_inherited_from_the_defaults_says_so(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "job.yaml",
        "defaults:\n  samplingRate: 11025\nscripts:\n"
        "  - {id: a, text: Hi.}\n  - id: b\n    text: Hi.\n    modelId: arcana\n",
    )

    err = failure(path)

    assert located(err) == (
        5,
        None,
        "scripts[1].samplingRate",
        "11025 is not a sampling rate arcana accepts: expected one of 8000, 16000, 22050, 24000, "
        "44100, 48000, 96000 (the value comes from defaults)",
    )


@pytest.mark.parametrize(
    ("bad_id", "message"),
    [
        ("", "is empty"),
        (".", "'.' must not contain '.' as a path part"),
        ("..", "'..' must not contain '..' as a path part"),
        ("a/../b", "'a/../b' must not contain '..' as a path part"),
        ("a/./b", "'a/./b' must not contain '.' as a path part"),
        ("/etc/passwd", "'/etc/passwd' must be relative: remove the leading '/'"),
        ("a\\b", "'a\\\\b' contains '\\'; use '/' to make sub-folders"),
        ("a//b", "'a//b' has an empty part ('//' or a trailing '/')"),
        ("a/", "'a/' has an empty part ('//' or a trailing '/')"),
        ("two words", "'two words' contains whitespace or a control character"),
        ("bell\x07", "contains a control character (U+0007); remove it"),
        (
            ".hidden",
            "'.hidden' may use only letters, digits, '.', '_' and '-' (with '/' between "
            "sub-folders), and each part must start with a letter, digit or '_'",
        ),
        (
            "café",
            "'café' may use only letters, digits, '.', '_' and '-' (with '/' between "
            "sub-folders), and each part must start with a letter, digit or '_'",
        ),
        ("x" * 201, "is 201 characters long; the limit is 200"),
    ],
)
def test_unsafe_ids_are_rejected(tmp_path: Path, bad_id: str, message: str) -> None:
    path = write(tmp_path, "job.yaml", yaml.safe_dump({"scripts": [{"id": bad_id, "text": "Hi"}]}))

    err = failure(path)

    assert located(err) == (2, None, "scripts[0].id", message)


@pytest.mark.parametrize(
    "good_id", ["a", "Welcome_01", "ivr/main-menu", "_x/v1.2/final", "x" * 200]
)
def test_safe_ids_are_accepted(good_id: str) -> None:
    check_script_id(good_id)


# --- text files -------------------------------------------------------------------------------


def _with_file(value: str) -> str:
    return f"scripts:\n  - id: ok\n    text: Fine.\n  - id: chapter\n    text_file: {value}\n"


@pytest.mark.parametrize(
    ("value", "setup", "message"),
    [
        ("missing.txt", None, "'missing.txt' does not exist"),
        ("folder", "dir", "'folder' is not a file"),
        (
            "latin1.txt",
            "latin1",
            "'latin1.txt' is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8",
        ),
        ("empty.txt", "empty", "'empty.txt' holds no text"),
        ("../outside.txt", "outside", "'../outside.txt' points outside the manifest's folder"),
        (
            "sub/../../outside.txt",
            "outside",
            "'sub/../../outside.txt' points outside the manifest's folder",
        ),
        ("{abs}", "outside", "'{abs}' is absolute; give a path relative to the manifest's folder"),
        ("link.txt", "link", "'link.txt' is a link to a file outside the manifest's folder"),
        ("''", None, "is empty"),
        ("[a.txt]", None, "must be a path relative to the manifest's folder"),
    ],
)
def test_text_file_problems_are_located(
    tmp_path: Path, value: str, setup: str | None, message: str
) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    outside = write(tmp_path, "outside.txt", "Secret.")
    if setup == "dir":
        (folder / "folder").mkdir()
    elif setup == "latin1":
        write(folder, "latin1.txt", "Line one.\nCaf\xe9.\n".encode("latin-1"))
    elif setup == "empty":
        write(folder, "empty.txt", " \n\n")
    elif setup == "link":
        (folder / "link.txt").symlink_to(outside)
    value = value.replace("{abs}", str(outside))
    path = write(folder, "job.yaml", _with_file(value))

    err = failure(path)

    assert located(err) == (5, None, "scripts[1].text_file", message.replace("{abs}", str(outside)))


# --- the manifest file itself -----------------------------------------------------------------


def test_a_missing_manifest(tmp_path: Path) -> None:
    err = failure(tmp_path / "nope.yaml")

    assert (err.file, *located(err)) == (
        str(tmp_path / "nope.yaml"),
        None,
        None,
        None,
        "the file does not exist",
    )


def test_a_folder_named_like_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").mkdir()

    assert failure(tmp_path / "jobs.yaml").message == "is not a file"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("jobs.toml", "unsupported manifest type '.toml'; use .yaml, .yml, .json or .csv"),
        ("jobs", "a manifest's name must end in .yaml, .yml, .json or .csv"),
    ],
)
def test_unknown_extensions(tmp_path: Path, name: str, message: str) -> None:
    path = write(tmp_path, name, "{}")

    assert located(failure(path)) == (None, None, None, message)


def test_a_json_manifest_reads_as_yaml_with_its_lines(tmp_path: Path) -> None:
    body = '{"job": "j",\n "scripts": [\n  {"id": "a", "text": "Hi."},\n  {"id": "b", "speed": 9}]}'
    path = write(tmp_path, "jobs.json", body)

    err = failure(path)

    assert (err.file, err.line) == (str(path), 4)
    assert load_manifest(path, data=b'{"scripts": [{"id": "a", "text": "Hi."}]}').name == "jobs"


def test_a_manifest_that_is_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", "scripts:\n  - id: a\n    text: Caf\xe9\n".encode("cp1252"))

    err = failure(path)

    assert located(err) == (
        3,
        None,
        None,
        "the manifest is not UTF-8 text (byte 0xe9 on line 3); save it as UTF-8",
    )


def test_a_control_character_in_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", "scripts:\n  - id: a\n    text: bad \x01 char\n")

    assert located(failure(path)) == (3, None, None, "character '\\x01' is not allowed in YAML")


def test_the_voice_model_rejects_a_rate_its_model_refuses() -> None:
    assert Voice(modelId="arcana", samplingRate=48000).effective_sampling_rate == 48000
    with pytest.raises(ValueError, match="not a sampling rate arcana accepts"):
        Voice(modelId="arcana", samplingRate=44000)


@pytest.mark.parametrize(
    ("model_id", "spelled", "code"),
    [
        ("mistv2", "en", "eng"),
        ("mistv2", "eng", "eng"),
        ("mistv3", "es", "spa"),
        ("coda", "ja", "jpn"),
        ("coda", "hi", "hin"),
        ("coda", "ara", "ara"),
        ("arcana", "he", "heb"),
    ],
)
def test_lang_takes_either_of_rimes_spellings_and_keeps_the_three_letter_code(
    model_id: str, spelled: str, code: str
) -> None:
    assert Voice(modelId=model_id, lang=spelled).lang == code


@pytest.mark.parametrize(
    ("model_id", "lang", "known"),
    [
        ("coda", "he", "ara/ar, eng/en, fra/fr, ger/de, hin/hi, jpn/ja, por/pt, spa/es"),
        ("mistv3", "pt", "eng/en, fra/fr, ger/de, spa/es"),
        ("mist", "spa", "eng/en"),
        ("mistv2", "EN", "eng/en, fra/fr, ger/de, spa/es"),
    ],
)
def test_a_language_no_voice_of_the_model_speaks_is_refused_with_both_spellings(
    model_id: str, lang: str, known: str
) -> None:
    message = f"{lang!r} is not a language {model_id} speaks: expected one of {known}"
    with pytest.raises(ValueError, match=re.escape(message)):
        Voice(modelId=model_id, lang=lang)


def test_en_and_eng_are_one_voice_and_one_cache_key(tmp_path: Path) -> None:
    keys = []
    for lang in ("en", "eng"):
        path = write(tmp_path, f"{lang}.yaml", f"defaults:\n  lang: {lang}\n" + _ONE_SCRIPT)
        [script] = plan_manifest(path).scripts
        assert script.params.lang == "eng"
        keys.append([segment.cache_key for segment in script.segments])
    assert keys[0] == keys[1]


# --- properties -------------------------------------------------------------------------------

_ID_ALPHABET = "abZ09._-/\\ \t\x00é~:"


@given(st.text(alphabet=_ID_ALPHABET, max_size=12))
def test_every_accepted_id_stays_inside_the_destination(script_id: str) -> None:
    try:
        check_script_id(script_id)
    except PathProblem:
        return
    base = "/dest"
    joined = os.path.normpath(os.path.join(base, script_id + ".wav"))
    assert joined.startswith(base + "/")
    assert joined == f"{base}/{script_id}.wav"  # nothing to normalize away
    assert all(part and not part.startswith(".") for part in script_id.split("/"))


_texts = st.text(
    # Every character a text may hold: no control characters but tab and line breaks.
    alphabet=st.characters(exclude_categories=["Cs", "Cc"], include_characters="\t\n\r"),
    min_size=1,
    max_size=60,
).filter(lambda t: normalize_text(t) != "")


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(_texts, min_size=1, max_size=4))
def test_csv_texts_survive_the_round_trip(tmp_path: Path, texts: list[str]) -> None:
    path = tmp_path / "round.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([f"s{i}", text] for i, text in enumerate(texts))

    job = load_manifest(path)

    assert [s.text for s in job.scripts] == [normalize_text(t) for t in texts]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(_texts, min_size=1, max_size=4))
def test_yaml_texts_survive_the_round_trip(tmp_path: Path, texts: list[str]) -> None:
    path = tmp_path / "round.yaml"
    scripts = [{"id": f"s{i}", "text": text} for i, text in enumerate(texts)]
    # Double-quoted: PyYAML writes a NEL (U+0085) raw into a plain or single-quoted scalar,
    # where YAML's own line folding reads it back as a space, so only escapes round-trip.
    dumped = yaml.safe_dump({"scripts": scripts}, allow_unicode=True, default_style='"')
    path.write_text(dumped, encoding="utf-8")

    job: JobSpec = load_manifest(path)

    assert [s.text for s in job.scripts] == [normalize_text(t) for t in texts]


@pytest.mark.parametrize("value", ["0", "-1", "1001", "2.5", "true", "'3'", "[3]"])
def test_keep_releases_must_be_a_whole_number_in_range(tmp_path: Path, value: str) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(f"keep_releases: {value}\nscripts:\n  - id: a\n    text: Hi.\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.field == "keep_releases"
    assert caught.value.line == 1
    assert "whole number from 1 to 1,000" in str(caught.value)


def test_keep_releases_reaches_the_plan(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text("keep_releases: 7\nscripts:\n  - id: a\n    text: Hi.\n")
    assert plan_manifest(path).options.keep_releases == 7
    path.write_text("scripts:\n  - id: a\n    text: Hi.\n")
    assert plan_manifest(path).options.keep_releases == 3
