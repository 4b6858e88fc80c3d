"""Hostile manifests meet the stated limits in the one validation `plan`, `render` and `submit`
share (`plan_manifest`): one located InputError, never another exception, before any request.

One test class per kind of finding: unbounded pauses, colliding outputs, inputs that used to
end in a traceback, checks that only a render made, and junk that used to be accepted.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from pipeline.errors import InputError, ManifestError
from pipeline.manifest.models import (
    MAX_MANIFEST_BYTES,
    MAX_SCRIPTS,
    MAX_TEXT_CHARS,
    MAX_TEXT_FILE_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
)
from pipeline.markup import MAX_PAUSE_MS
from pipeline.plan import JobPlan, plan_manifest
from pipeline.storage.keys import first_clash
from tests.unit.test_manifest import write


def refused(path: Path, **kwargs: str) -> ManifestError:
    """The one ManifestError of an invalid manifest (any other exception fails the test)."""
    with pytest.raises(InputError) as info:
        plan_manifest(path, **kwargs)
    assert isinstance(info.value, ManifestError), info.value
    message = str(info.value)
    assert "\n" not in message  # one line on the terminal
    message.encode("utf-8")  # printable: no lone surrogate in the message itself
    assert message.startswith(str(path))
    return info.value


def script(text: str, extra: str = "", head: str = "") -> str:
    """A manifest with one script whose text is double-quoted YAML (escapes allowed)."""
    return f'{head}scripts:\n  - id: a\n    text: "{text}"\n{extra}'


class TestPauses:
    """`<ms>` markup is held to the limit of pause_ms, alone or side by side, anywhere."""

    @pytest.mark.parametrize(
        "text",
        [
            "<99999999999> Hello.",  # a lead pause: silence until the disk was full
            "Hello <86400000> there.",  # inside a sentence: sent to Rime, which ran out of memory
            "Hello. <86400000> There.",  # at a cut: 691 MB of silence from 24 characters
            "Hello. <" + "9" * 5000 + "> There.",  # too many digits to be an int at all
            f"Hello. <{MAX_PAUSE_MS + 1}> There.",
        ],
    )
    def test_a_pause_over_the_limit_is_refused(self, tmp_path: Path, text: str) -> None:
        err = refused(write(tmp_path, "job.yaml", script(text)))

        assert (err.line, err.field) == (3, "scripts[0].text")
        assert f"the limit of {MAX_PAUSE_MS} milliseconds" in err.message

    def test_pauses_side_by_side_are_one_pause(self, tmp_path: Path) -> None:
        half = MAX_PAUSE_MS // 2 + 1
        err = refused(write(tmp_path, "job.yaml", script(f"Hello. <{half}> <{half}> There.")))

        assert f"add up to {2 * half} milliseconds" in err.message
        assert "line 1, column 16 of the text" in err.message  # the marker that went over

    def test_pauses_at_the_limit_are_planned(self, tmp_path: Path) -> None:
        text = f"<{MAX_PAUSE_MS}>Hello. <{MAX_PAUSE_MS}> There.<{MAX_PAUSE_MS}>"
        extra = f"    pause_ms: {MAX_PAUSE_MS}\n    pauses_as_cuts: true\n"

        (planned,) = plan_manifest(write(tmp_path, "job.yaml", script(text, extra))).scripts

        assert planned.lead_pause_ms == MAX_PAUSE_MS
        assert [s.pause_after_ms for s in planned.segments] == [MAX_PAUSE_MS, MAX_PAUSE_MS]

    def test_pause_ms_has_the_same_limit(self, tmp_path: Path) -> None:
        extra = f"    paragraph_pause_ms: {MAX_PAUSE_MS + 1}\n"

        err = refused(write(tmp_path, "job.yaml", script("Hello.", extra)))

        assert err.field == "scripts[0].paragraph_pause_ms"
        assert f"less than or equal to {MAX_PAUSE_MS}" in err.message


class TestOutputCollisions:
    """Every output key is computed at validation; two that cannot both exist name both ids."""

    @pytest.mark.parametrize(
        ("scripts", "fragment"),
        [
            (
                "  - {id: x, text: Hi., formats: [wav-mulaw]}\n  - {id: x.mulaw, text: Hi.}\n",
                "'x.mulaw' writes 'x.mulaw.wav' and 'x' (at line 2) writes 'x.mulaw.wav': "
                "the same file",
            ),
            (
                "  - {id: a, text: Hi.}\n  - {id: a.wav/b, text: Hi.}\n",
                "'a.wav/b' writes 'a.wav/b.wav' and 'a' (at line 2) writes 'a.wav': a file and "
                "a folder of the same name",
            ),
            (  # the folder first, the file after it
                "  - {id: a.wav/b, text: Hi.}\n  - {id: a, text: Hi.}\n",
                "'a' writes 'a.wav' and 'a.wav/b' (at line 2) writes 'a.wav/b.wav': a file and "
                "a folder",
            ),
            (
                "  - {id: A.WAV/b, text: Hi.}\n  - {id: a, text: Hi.}\n",
                "'a' writes 'a.wav' and 'A.WAV/b' (at line 2) writes 'A.WAV/b.wav'",
            ),
            (
                "  - {id: X.Mulaw, text: Hi.}\n  - {id: x, text: Hi., formats: [wav-mulaw]}\n",
                "one file where letter case is ignored",
            ),
        ],
    )
    def test_clashing_outputs_are_refused(
        self, tmp_path: Path, scripts: str, fragment: str
    ) -> None:
        err = refused(write(tmp_path, "job.yaml", "scripts:\n" + scripts))

        assert (err.line, err.field) == (3, "scripts[1].id")
        assert fragment in err.message

    def test_outputs_that_only_look_alike_are_fine(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            "job.yaml",
            "scripts:\n  - {id: a, text: Hi., formats: [wav, wav-mulaw, mulaw]}\n"
            "  - {id: a.mulaw.x, text: Hi.}\n  - {id: a.wavs/b, text: Hi.}\n",
        )

        plan = plan_manifest(path)

        assert [s.script_id for s in plan.scripts] == ["a", "a.mulaw.x", "a.wavs/b"]

    def test_first_clash_is_the_first_in_order(self) -> None:
        keys = [(1, "a/b.wav"), (2, "c.wav"), (3, "A"), (4, "c.WAV")]

        assert first_clash(keys) == (1, 3, "a/b.wav", "A")
        assert first_clash(keys[1:]) == (2, 4, "c.wav", "c.WAV")
        assert first_clash([(1, "a.wav"), (2, "a.wav.wav"), (3, "b/a.wav")]) is None


class TestNoTraceback:
    """Inputs that used to end in MemoryError, RecursionError or an encoding error."""

    def test_a_yaml_alias_bomb_stops_at_the_values_limit(self, tmp_path: Path) -> None:
        # 8 lines that stand for 2,000,000 values; the reported bomb stood for 387 million, but
        # just past the limit is enough, and bounded should the limit ever go missing.
        levels = ["a: &a [" + ", ".join(["x"] * 10) + "]"]
        for prev, name in zip("abcde", "bcdef", strict=True):
            levels.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
        levels.append("scripts: [*f, *f]")
        err = refused(write(tmp_path, "job.yaml", "\n".join(levels) + "\n"))

        assert f"more than {MAX_YAML_VALUES:,} values once its YAML aliases" in err.message

    @pytest.mark.parametrize(
        "content",
        [
            "scripts: " + "[" * 20_000 + "]" * 20_000 + "\n",
            "scripts:\n" + "".join("  " * i + "- \n" for i in range(1, 2_000)),
            # Aliases that each nest the one before: deep once expanded, shallow as written.
            "".join(
                f"x{i}: &x{i} [{'*x' + str(i - 1) if i else '1'}]\n"
                for i in range(MAX_YAML_DEPTH + 2)
            )
            + f"scripts: *x{MAX_YAML_DEPTH + 1}\n",
            "x: &a [*a]\nscripts: *a\n",  # an alias inside itself
        ],
        ids=["flow", "block", "aliases", "recursive"],
    )
    def test_deep_nesting_is_refused(self, tmp_path: Path, content: str) -> None:
        err = refused(write(tmp_path, "job.yaml", content))

        assert f"nest more than {MAX_YAML_DEPTH} levels deep" in err.message

    def test_deep_brackets_in_a_text_are_markup_errors(self, tmp_path: Path) -> None:
        err = refused(write(tmp_path, "job.yaml", script("Hi " + "[" * 20_000 + "x")))

        assert "nested markup" in err.message

    @pytest.mark.parametrize(
        ("content", "field", "what"),
        [
            (script("Hi \\ud800 there."), "scripts[0].text", "a lone surrogate (U+D800)"),
            (
                script("Hi.", '    speaker: "c\\udfffve"\n'),
                "scripts[0].speaker",
                "a lone surrogate (U+DFFF)",
            ),
            (script("Hi.", head='job: "j\\ud800"\n'), "job", "a lone surrogate"),
            (script("Hi \\0 there."), "scripts[0].text", "a control character (U+0000)"),
            (
                script("Hi.", '    "sp\\0eed": 1\n'),
                "scripts[0]['sp\\x00eed']",
                "a control character (U+0000)",
            ),
        ],
    )
    def test_unencodable_and_nul_characters_are_refused(
        self, tmp_path: Path, content: str, field: str, what: str
    ) -> None:
        err = refused(write(tmp_path, "job.yaml", content))

        assert err.field == field
        assert f"contains {what}" in err.message

    def test_an_undecodable_manifest_name_or_a_bad_override(self, tmp_path: Path) -> None:
        # The OS hands undecodable bytes of a name over as lone surrogates.
        err = refused(write(tmp_path, "job.yaml", script("Hi.")), output="out\x07")
        assert (err.field, err.message) == (
            "output (override)",
            "contains a control character (U+0007)",
        )

        message = str(ManifestError("is not a file", file="/in/\udcff.yaml"))
        assert message.encode("utf-8").decode() == "/in/\\udcff.yaml: is not a file"

    def test_a_nul_in_a_text_file_is_located_in_the_file(self, tmp_path: Path) -> None:
        write(tmp_path, "t.txt", "First line.\nSecond\x00 line.\n")
        path = write(tmp_path, "job.yaml", "scripts:\n  - {id: a, text_file: t.txt}\n")

        err = refused(path)

        assert err.field == "scripts[0].text_file"
        assert "'t.txt' contains a control character (U+0000) at line 2, column 7" in err.message

    def test_a_nul_in_a_csv_cell_is_located(self, tmp_path: Path) -> None:
        path = write(tmp_path, "job.csv", "id,text\na,Fine.\nb,Not\x00 fine.\n")

        err = refused(path)

        assert (err.line, err.row, err.field) == (3, 2, "text")
        assert "(U+0000)" in err.message

    @pytest.mark.parametrize(
        "value",
        ["1" * 5000, "2024-13-45", "!!float nonsense", "!!binary ???"],
    )
    def test_values_yaml_cannot_construct_are_located(self, tmp_path: Path, value: str) -> None:
        err = refused(write(tmp_path, "job.yaml", script("Hi.", f"    pause_ms: {value}\n")))

        assert err.line == 4

    @pytest.mark.parametrize(
        ("value", "kind"), [("2024-01-31", "a date"), ("!!binary AAAA", "binary data")]
    )
    def test_only_plain_data(self, tmp_path: Path, value: str, kind: str) -> None:
        err = refused(write(tmp_path, "job.yaml", script("Hi.", f"    speaker: {value}\n")))

        assert err.field == "scripts[0].speaker"
        assert f"not {kind}" in err.message


class TestPlanSaysWhatRenderSays:
    """Every check that needs no request runs when planning, not only when rendering."""

    def test_max_chars_above_the_models_limit(self, tmp_path: Path) -> None:
        err = refused(write(tmp_path, "job.yaml", script("Hi.", "    max_chars: 900\n")))

        assert err.field == "scripts[0].max_chars"
        assert err.message == "900 is more than mistv2 takes in one request: at most 500"

    def test_a_language_the_model_does_not_speak(self, tmp_path: Path) -> None:
        err = refused(write(tmp_path, "job.yaml", script("Hi.", "    lang: klingon\n")))

        assert err.field == "scripts[0].lang"
        assert "'klingon' is not a language mistv2 speaks" in err.message

    def test_a_destination_that_is_a_file(self, tmp_path: Path) -> None:
        write(tmp_path, "taken", "a file")
        path = write(tmp_path, "job.yaml", script("Hi.", head="output: taken/inner\n"))

        err = refused(path)
        assert (err.line, err.field) == (1, "output")
        assert f"{str(tmp_path / 'taken' / 'inner')!r} is inside" in err.message

        err = refused(path, output=str(tmp_path / "taken"))
        assert err.field == "output (override)"
        assert "is a file, not a folder" in err.message

    def test_an_output_held_by_a_folder_or_under_a_file(self, tmp_path: Path) -> None:
        (tmp_path / "out" / "a.wav").mkdir(parents=True)
        write(tmp_path, "out/b", "a file where a folder is needed")
        path = write(tmp_path, "job.yaml", script("Hi.", head="output: out\n"))

        assert "output 'a.wav' is an existing folder" in refused(path).message

        path.write_text(path.read_text().replace("id: a", "id: b/c"))
        assert "output 'b/c.wav' needs a folder where" in refused(path).message


class TestJunk:
    """Values that used to be accepted and sent, or refused for the wrong reason."""

    @pytest.mark.parametrize(
        ("extra", "field", "fragment"),
        [
            ("    speed: true\n", "speed", "must be a number, not true"),
            ("    pause_ms: false\n", "pause_ms", "must be a number, not false"),
            ("    samplingRate: true\n", "samplingRate", "must be a number, not true"),
            ("    temperature: 1e308\n", "temperature", "less than or equal to 2"),
            ("    repetition_penalty: 1e300\n", "repetition_penalty", "less than or equal to 3"),
            (
                "    inlineSpeedAlpha: 1e300\n",
                "inlineSpeedAlpha",
                "between 0.25 and 4 (got 1e+300)",
            ),
            ("    inlineSpeedAlpha: [true]\n", "inlineSpeedAlpha[0]", "not true"),
            ("    speaker: " + "c" * 101 + "\n", "speaker", "at most 100 characters"),
        ],
    )
    def test_numbers_and_settings_have_ranges(
        self, tmp_path: Path, extra: str, field: str, fragment: str
    ) -> None:
        err = refused(write(tmp_path, "job.yaml", script("A [b] c.", extra)))

        assert err.field == f"scripts[0].{field}"
        assert fragment in err.message

    @pytest.mark.parametrize(
        "text", ["\\u200b\\u200b", "\\u200b <200> \\ufeff\\u2060", "\\u200d \\u00a0 \\u3000"]
    )
    def test_invisible_text_is_nothing_to_speak(self, tmp_path: Path, text: str) -> None:
        err = refused(write(tmp_path, "job.yaml", script(text)))

        assert "nothing to speak" in err.message

    @pytest.mark.parametrize(
        ("escape", "code"), [("\\a", "0007"), ("\\e", "001B"), ("\\x7f", "007F")]
    )
    def test_control_characters_are_refused(self, tmp_path: Path, escape: str, code: str) -> None:
        err = refused(write(tmp_path, "job.yaml", script(f"Ring{escape} the bell.")))

        assert err.field == "scripts[0].text"
        assert f"a control character (U+{code})" in err.message

    def test_tabs_and_line_breaks_are_text(self, tmp_path: Path) -> None:
        (planned,) = plan_manifest(
            write(tmp_path, "job.yaml", script("One.\\tTwo.\\r\\nThree."))
        ).scripts

        assert "".join(s.source for s in planned.segments) == "One.\tTwo.\nThree."

    def test_a_csv_cell_may_be_as_long_as_a_text(self, tmp_path: Path) -> None:
        text = "Hello there. " * (200_000 // 13)  # past Python's 128 KiB field limit
        path = tmp_path / "long.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([["id", "text"], ["a", text]])

        plan: JobPlan = plan_manifest(path)
        assert "".join(s.source for s in plan.scripts[0].segments) == text.strip()

        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([["id", "text"], ["a", "x " * (MAX_TEXT_CHARS // 2 + 1)]])
        err = refused(path)
        assert f"longer than {MAX_TEXT_CHARS:,} characters" in err.message

    def test_sizes_of_texts_files_and_manifests(self, tmp_path: Path) -> None:
        long_text = "word " * (MAX_TEXT_CHARS // 5 + 1)
        err = refused(write(tmp_path, "a.yaml", script(long_text)))
        assert f"the limit is {MAX_TEXT_CHARS:,}" in err.message

        with (tmp_path / "big.txt").open("wb") as handle:
            handle.truncate(MAX_TEXT_FILE_BYTES + 1)  # sparse: refused before it is read
        err = refused(write(tmp_path, "b.yaml", "scripts:\n  - {id: a, text_file: big.txt}\n"))
        assert f"a text file may hold at most {MAX_TEXT_FILE_BYTES:,}" in err.message

        manifest = write(tmp_path, "c.yaml", script("Hi."))
        with manifest.open("ab") as handle:
            handle.truncate(MAX_MANIFEST_BYTES + 1)
        assert f"the limit is {MAX_MANIFEST_BYTES:,}" in refused(manifest).message

    def test_the_number_of_scripts(self, tmp_path: Path) -> None:
        rows = [{"id": f"s{i}", "text": "Hi."} for i in range(MAX_SCRIPTS + 1)]
        path = write(tmp_path, "many.yaml", yaml.safe_dump({"scripts": rows}))

        err = refused(path)

        assert err.field == "scripts"
        assert f"at most {MAX_SCRIPTS:,}" in err.message


def test_the_readme_states_the_limits_in_force() -> None:
    """The README's table is the user's copy of the limits: it must not drift from the code."""
    from pipeline.manifest import models

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| what | allowed |") :].split("\n\n")[0]
    stated = [
        f"{models.MAX_MANIFEST_BYTES // 2**20} MiB",
        f"{models.MAX_SCRIPTS:,} scripts",
        f"{models.MAX_YAML_DEPTH} levels",
        f"{models.MAX_YAML_VALUES:,} values",
        f"{models.MAX_TEXT_CHARS:,} characters",
        f"{models.MAX_TEXT_FILE_BYTES:,} bytes",
        f"{models.MAX_ID_CHARS} / {models.MAX_JOB_NAME_CHARS} / {models.MAX_OUTPUT_CHARS:,}",
        f"1 to {models.MAX_SETTING_CHARS} characters",
        f"{models.SPEED_RANGE[0]:g} to {models.SPEED_RANGE[1]:g}",
        f"{models.TEMPERATURE_RANGE[0]:g} to {models.TEMPERATURE_RANGE[1]:g} / above 0 to "
        f"{models.TOP_P_MAX:g} / above 0 to {models.REPETITION_PENALTY_MAX:g}",
        f"0 to {MAX_PAUSE_MS:,} ms",
        f"{models.LOUDNESS_RANGE[0]:g} to {models.LOUDNESS_RANGE[1]:g}",
        f"request limit ({models.DEFAULT_MAX_CHARS})",
    ]
    assert [s for s in stated if s not in table] == []
