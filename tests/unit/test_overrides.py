"""`--set` and `--voice-map`: how they parse, how they apply, and that an override is validated
exactly as the same value written in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import InputError, ManifestError, OverrideError
from pipeline.manifest import JobSpec, load_manifest
from pipeline.manifest.overrides import (
    SET,
    VOICE_MAP,
    Overrides,
    parse_overrides,
    split_assignment,
)
from pipeline.manifest.readers import VOICE_KEYS
from pipeline.options import JobOptions
from pipeline.plan import plan_manifest
from tests.unit.test_manifest import write

TWO = "scripts:\n  - id: a\n    text: Hi.\n  - id: b\n    text: There.\n"


def load(path: Path, sets: dict[str, str] | None = None, **renames: str) -> JobSpec:
    return load_manifest(path, overrides=parse_overrides((sets or {}).items(), renames.items()))


def refused(path: Path, sets: dict[str, str] | None = None, **renames: str) -> InputError:
    with pytest.raises(InputError) as info:
        load(path, sets, **renames)
    assert "\n" not in str(info.value)
    return info.value


def speakers(job: JobSpec) -> list[str]:
    return [s.voice.speaker for s in job.scripts]


# --- what they do ------------------------------------------------------------------------------


def test_set_changes_the_defaults_and_a_scripts_own_value_still_wins(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jobs.yaml",
        "defaults: {speaker: cove, samplingRate: 22050}\n"
        "scripts:\n  - id: a\n    text: Hi.\n"
        "  - id: b\n    text: There.\n    speaker: marsh\n    samplingRate: 16000\n",
    )

    job = load(path, {"speaker": "luna", "modelId": "arcana", "samplingRate": "8000"})

    assert (job.defaults.speaker, job.defaults.modelId, job.defaults.samplingRate) == (
        "luna",
        "arcana",
        8000,
    )
    a, b = job.scripts
    assert (a.voice.speaker, a.voice.modelId, a.voice.samplingRate) == ("luna", "arcana", 8000)
    assert (b.voice.speaker, b.voice.modelId, b.voice.samplingRate) == ("marsh", "arcana", 16000)


def test_values_read_as_in_a_manifest(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", "defaults: {temperature: 0.5}\n" + TWO)

    job = load(
        path,
        {
            "formats": "mp3|wav",
            "inlineSpeedAlpha": "[0.5, 2]",
            "pauses_as_cuts": "true",
            "temperature": "null",  # clears what the manifest set
            "mp3_bitrate": "96",
        },
    )

    voice = job.defaults
    assert voice.formats == ("mp3", "wav")
    assert voice.inlineSpeedAlpha == (0.5, 2.0)
    assert voice.pauses_as_cuts is True
    assert voice.temperature is None
    assert voice.mp3_bitrate == "96k"
    assert all(s.voice == voice for s in job.scripts)


def test_voice_map_renames_a_speaker_in_the_defaults_and_in_every_script(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jobs.yaml",
        "defaults: {speaker: cove}\nscripts:\n  - id: a\n    text: Hi.\n"
        "  - id: b\n    text: Hi.\n    speaker: cove\n"
        "  - id: c\n    text: Hi.\n    speaker: marsh\n",
    )

    job = load(path, cove="mesa")

    assert job.defaults.speaker == "mesa"
    assert speakers(job) == ["mesa", "mesa", "marsh"]


def test_voice_map_applies_after_set_and_renames_do_not_chain(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jobs.yaml",
        "defaults: {speaker: marsh}\nscripts:\n  - id: a\n    text: Hi.\n"
        "  - id: b\n    text: Hi.\n    speaker: mesa\n",
    )

    job = load(path, {"speaker": "cove"}, cove="mesa", mesa="bayou")

    # a: marsh -> cove (--set) -> mesa (--voice-map); b: mesa -> bayou, not on to anything.
    assert speakers(job) == ["mesa", "bayou"]


def test_a_csv_gets_job_wide_defaults_from_set(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ivr.csv",
        "id,text,formats\nwelcome,Thank you for calling.,\nmenu,Press 1.,mp3\n",
    )

    job = load(path, {"samplingRate": "8000", "formats": "wav-mulaw"}, cove="mesa")

    welcome, menu = job.scripts
    assert (welcome.voice.samplingRate, welcome.voice.formats) == (8000, ("wav-mulaw",))
    assert (menu.voice.samplingRate, menu.voice.formats) == (8000, ("mp3",))  # its own cell
    assert speakers(job) == ["mesa", "mesa"]


def test_the_plan_records_the_overrides_as_given(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", TWO)
    options = JobOptions(set=(("speaker", "luna"), ("modelId", "arcana")))

    plan = plan_manifest(path, options=options)

    assert plan.options == options
    assert {s.params.speaker for s in plan.scripts} == {"luna"}
    assert {s.params.model_id for s in plan.scripts} == {"arcana"}


# --- what they refuse ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "text", "message"),
    [
        (SET, "speed", "--set speed: expected KEY=VALUE, e.g. --set speaker=luna"),
        (SET, "=1", "--set =1: expected KEY=VALUE"),
        (VOICE_MAP, "cove", "--voice-map cove: expected OLD=NEW, e.g. --voice-map cove=luna"),
    ],
)
def test_an_assignment_needs_a_key_and_an_equals_sign(flag: str, text: str, message: str) -> None:
    with pytest.raises(OverrideError) as info:
        split_assignment(flag, text)

    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("sets", "renames", "message"),
    [
        ([("sped", "1.2")], [], "--set sped=1.2: unknown setting 'sped' (did you mean 'speed'?)"),
        ([("voice", "luna")], [], "did you mean 'speaker'?"),
        ([("output", "x")], [], "give the destination with --output"),
        ([("speed", "")], [], "--set speed=: expected a value after '='"),
        ([("speed", "1"), ("speed", "2")], [], "--set speed=2: speed is given twice"),
        ([("speaker", "{a: 1}")], [], "not a mapping"),
        ([("speaker", "*x")], [], "--set speaker=*x: cannot be read as a value"),
        ([("speaker", "2024-01-01")], [], "not a date; put it in quotes"),
        ([("speaker", '"a\\x07"')], [], "contains a control character (U+0007)"),
        ([("pause_ms", "9" * 5000)], [], "--set pause_ms=9999"),
        ([], [("cove", "")], "--voice-map cove=: expected a speaker after '='"),
        ([], [("cove", "a"), ("cove", "b")], "'cove' is renamed twice"),
        ([], [("cove", "x" * 101)], "String should have at most 100 characters"),
    ],
)
def test_an_override_that_cannot_be_read_is_named_by_its_flag(
    sets: list[tuple[str, str]], renames: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(OverrideError) as info:
        parse_overrides(sets, renames)

    assert message in str(info.value)
    assert str(info.value).startswith(("--set ", "--voice-map "))


def test_a_set_value_out_of_range_gets_the_manifests_message_and_names_the_flag(
    tmp_path: Path,
) -> None:
    yaml_path = write(tmp_path, "jobs.yaml", "defaults: {speed: 9}\n" + TWO)
    written = refused(yaml_path)
    path = write(tmp_path, "ok.yaml", TWO)

    err = refused(path, {"speed": "9"})

    assert isinstance(err, OverrideError) and isinstance(written, ManifestError)
    assert str(err) == f"--set speed=9: {written.message}"
    assert written.message == "Input should be less than or equal to 4 (got 9)"


def test_a_manifest_value_the_set_model_does_not_take_is_located_in_the_manifest(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "jobs.yaml", "defaults:\n  samplingRate: 11025\n" + TWO)

    err = refused(path, {"modelId": "arcana"})

    assert isinstance(err, ManifestError)
    assert (err.line, err.field) == (2, "defaults.samplingRate")
    assert "11025 is not a sampling rate arcana accepts" in err.message


def test_an_inherited_set_value_a_script_cannot_take_is_located_at_the_script(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "jobs.yaml",
        "defaults: {modelId: arcana}\nscripts:\n  - id: a\n    text: Hi.\n"
        "  - id: b\n    text: Hi.\n    modelId: mistv2\n",
    )

    err = refused(path, {"samplingRate": "96000"})

    assert isinstance(err, ManifestError)
    assert (err.line, err.field) == (5, "scripts[1].samplingRate")
    assert err.message.startswith("96000 is not a sampling rate mistv2 accepts")
    assert err.message.endswith("(the value comes from --set samplingRate=96000)")


def test_a_set_no_script_takes_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jobs.yaml",
        "scripts:\n  - id: a\n    text: Hi.\n    speaker: marsh\n"
        "  - id: b\n    text: Hi.\n    speaker: cove\n",
    )

    err = refused(path, {"speaker": "luna"})

    assert str(err) == (
        "--set speaker=luna: every script sets its own speaker, so it changes nothing (a "
        "script's own value wins; rename a speaker with --voice-map)"
    )


def test_a_rename_of_a_speaker_no_script_uses_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jobs.yaml",
        "defaults: {speaker: cove}\nscripts:\n  - id: a\n    text: Hi.\n    speaker: marsh\n"
        "  - id: b\n    text: Hi.\n    speaker: mesa\n",
    )

    # cove is the defaults' speaker, but every script speaks with its own.
    err = refused(path, cove="luna")

    assert str(err) == (
        "--voice-map cove=luna: no script speaks with 'cove' (this job's speakers: marsh, mesa)"
    )


# --- scripts from a CSV, defaults from the YAML beside it ----------------------------------------

IVR_CSV = "id,text,speaker,formats\nwelcome,Thank you for calling.,,\nmenu,Press 1.,marsh,mp3\n"


def test_a_yaml_manifest_takes_its_scripts_from_a_csv(tmp_path: Path) -> None:
    write(tmp_path, "prompts.csv", IVR_CSV)
    path = write(
        tmp_path,
        "ivr.yaml",
        "job: clinic-ivr\noutput: out/ivr\n"
        "defaults: {speaker: cove, samplingRate: 8000, formats: [wav-mulaw]}\n"
        "scripts_csv: prompts.csv\n",
    )

    job = load_manifest(path)

    assert (job.name, job.destination, job.manifest) == (
        "clinic-ivr",
        str(tmp_path / "out" / "ivr"),
        str(path),
    )
    welcome, menu = job.scripts
    # Blank cells take the defaults; a filled cell is the row's own.
    assert (welcome.voice.speaker, welcome.voice.formats) == ("cove", ("wav-mulaw",))
    assert (menu.voice.speaker, menu.voice.formats) == ("marsh", ("mp3",))
    assert {s.voice.samplingRate for s in job.scripts} == {8000}
    assert (menu.source.file, menu.source.line, menu.source.row) == (
        str(tmp_path / "prompts.csv"),
        3,
        2,
    )


def test_set_and_voice_map_apply_to_scripts_from_a_csv(tmp_path: Path) -> None:
    write(tmp_path, "prompts.csv", IVR_CSV)
    path = write(tmp_path, "ivr.yaml", "defaults: {samplingRate: 8000}\nscripts_csv: prompts.csv\n")

    job = load(path, {"formats": "wav-mulaw"}, marsh="bayou")

    assert speakers(job) == ["cove", "bayou"]
    assert [s.voice.formats for s in job.scripts] == [("wav-mulaw",), ("mp3",)]


def test_a_problem_in_a_linked_csv_names_the_csv_and_its_row(tmp_path: Path) -> None:
    write(tmp_path, "data/prompts.csv", "id,text,speed\nwelcome,Hi.,\nmenu,Press 1.,9\n")
    path = write(tmp_path, "ivr.yaml", "scripts_csv: data/prompts.csv\n")

    err = refused(path)

    assert str(err) == (
        f"{tmp_path / 'data' / 'prompts.csv'}:3: row 2: speed: "
        "Input should be less than or equal to 4 (got '9')"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("scripts_csv: prompts.csv\n" + TWO, "give either scripts or scripts_csv, not both"),
        ("scripts_csv: prompts.txt\n", "must be a .csv file, relative to the manifest's folder"),
        ("scripts_csv: [a.csv]\n", "must be a .csv file"),
        ("scripts_csv: missing.csv\n", "'missing.csv' does not exist"),
        ("scripts_csv: ../outside.csv\n", "'../outside.csv' points outside the manifest's folder"),
        ("scripts_csv: empty.csv\n", "the CSV file is empty"),
        ("script_csv: prompts.csv\n", "unknown key 'script_csv' (did you mean 'scripts_csv'?)"),
    ],
)
def test_a_scripts_csv_that_cannot_be_read_is_located(
    tmp_path: Path, content: str, message: str
) -> None:
    write(tmp_path, "prompts.csv", IVR_CSV)
    write(tmp_path, "empty.csv", "")
    write(tmp_path.parent, "outside.csv", IVR_CSV)
    path = write(tmp_path, "ivr.yaml", content)

    err = refused(path)

    assert isinstance(err, ManifestError)
    assert message in err.message


# --- properties --------------------------------------------------------------------------------

# A valid value of every setting other than its default: what script b writes as its own.
_OWN = {
    "speaker": "marsh",
    "modelId": "mistv3",
    "lang": "eng",
    "samplingRate": "16000",
    "speed": "1.5",
    "pauseBetweenBrackets": "false",
    "phonemizeBetweenBrackets": "true",
    "noTextNormalization": "true",
    "temperature": "0.5",
    "top_p": "0.9",
    "repetition_penalty": "1.2",
    "inlineSpeedAlpha": "[1.5, 0.5]",
    "formats": "mp3",
    "pause_ms": "100",
    "paragraph_pause_ms": "900",
    "max_chars": "300",
    "pauses_as_cuts": "true",
    "loudness_lufs": "-20",
    "true_peak_db": "-2",
    "mp3_bitrate": "192k",
    "captions": "srt",
    "lead_pause_ms": "500",
    "tail_pause_ms": "1500",
    "preset": "podcast",
}
_word = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,11}", fullmatch=True)
_scalar = st.one_of(
    # Numbers around every setting's range: inside it and just past either end.
    st.integers(-10, 50_000).map(str),
    st.floats(-1.0, 5.0).map(repr),
    st.sampled_from(["8000", "96000", "0.25", "4", "-16", "-80", "128", "yes", "off", "null"]),
    st.sampled_from(["wav", "wav-mulaw", "mulaw", "ogg", "luna", "arcana", "spa", *_OWN.values()]),
    _word,
)
# Values as someone writes them after `key=` or `key: `: one value, or a list.
_value_text = st.one_of(
    _scalar,
    st.lists(_scalar, min_size=1, max_size=3).map("|".join),
    st.lists(_scalar, min_size=1, max_size=3).map(lambda items: f"[{', '.join(items)}]"),
)
_keys = st.sampled_from(VOICE_KEYS)


@given(key=_keys, text=_value_text)
def test_any_valid_assignment_round_trips_through_the_job_record(key: str, text: str) -> None:
    pair = split_assignment(SET, f"{key}={text}")
    assert pair == (key, text)
    try:
        parsed = parse_overrides([pair])
    except OverrideError:
        return  # not a value (a YAML alias, a mapping): refused before any record
    (setting,) = parsed.settings
    assert str(setting) == f"{key}={text}"

    # What the job table keeps (JSON) gives the same overrides back.
    recorded = JobOptions.from_json(json.loads(json.dumps(JobOptions(set=(pair,)).to_json())))

    assert recorded.set == (pair,)
    assert parse_overrides(recorded.set) == parsed


_MANIFEST_DEFAULTS = {"speaker": "cove", "pause_ms": "300"}


def test_every_setting_has_an_own_value_for_the_properties() -> None:
    assert set(_OWN) == set(VOICE_KEYS)


def _manifest(defaults: dict[str, str], key: str) -> str:
    lines = "".join(f"  {name}: {value}\n" for name, value in defaults.items())
    # Script a inherits every default; b writes its own value of the key under test.
    return (
        f"defaults:\n{lines}scripts:\n  - id: a\n    text: Hi.\n"
        f"  - id: b\n    text: There.\n    {key}: {_OWN[key]}\n"
    )


def _outcome(path: Path, sets: dict[str, str]) -> tuple[str, object]:
    try:
        job = load(path, sets)
    except (ManifestError, OverrideError) as exc:
        return "refused", exc.message
    return "loaded", (job.defaults, tuple(s.voice for s in job.scripts))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=_keys, text=_value_text)
def test_an_override_is_the_same_as_writing_it_in_the_defaults(
    tmp_path: Path, key: str, text: str
) -> None:
    try:
        parse_overrides([(key, text)])
    except OverrideError:
        return  # refused before the manifest is read (property above)
    written = write(tmp_path, "written.yaml", _manifest({**_MANIFEST_DEFAULTS, key: text}, key))
    overridden = write(tmp_path, "overridden.yaml", _manifest(_MANIFEST_DEFAULTS, key))

    # The same Voice for the defaults and every script, or the same message.
    assert _outcome(overridden, {key: text}) == _outcome(written, {})


_POOL = ("cove", "marsh", "mesa", "bayou", "lagoon")


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    default=st.sampled_from(_POOL),
    own=st.lists(st.one_of(st.none(), st.sampled_from(_POOL)), min_size=1, max_size=4),
    renames=st.dictionaries(st.sampled_from(_POOL), st.sampled_from(_POOL), max_size=3),
)
def test_a_voice_map_is_the_same_as_renaming_every_speaker_in_the_manifest(
    tmp_path: Path, default: str, own: list[str | None], renames: dict[str, str]
) -> None:
    def manifest(name: str, rename: dict[str, str]) -> Path:
        scripts = "".join(
            f"  - id: s{i}\n    text: Hi.\n"
            + (f"    speaker: {rename.get(s, s)}\n" if s is not None else "")
            for i, s in enumerate(own)
        )
        text = f"defaults:\n  speaker: {rename.get(default, default)}\nscripts:\n{scripts}"
        return write(tmp_path, name, text)

    original = manifest("original.yaml", {})
    used = {default if s is None else s for s in own}
    if not set(renames) <= used:
        with pytest.raises(OverrideError, match="no script speaks with"):
            load(original, **renames)
        return

    renamed = load(original, **renames)
    edited = load(manifest("edited.yaml", renames))

    assert renamed.defaults == edited.defaults
    assert [s.voice for s in renamed.scripts] == [s.voice for s in edited.scripts]


def test_no_overrides_change_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", "defaults: {speaker: marsh}\n" + TWO)

    assert load_manifest(path, overrides=Overrides()) == load_manifest(path)
