"""`lexicon:` in a manifest: inline, YAML and CSV files, a script's own over the job's; each
problem located; the plan it makes (phonemes per segment, cache keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ManifestError
from pipeline.manifest import load_manifest
from pipeline.plan import ScriptPlan, plan_manifest

HEAD = """\
job: lex
output: out
defaults: {speaker: cove, modelId: mistv2, samplingRate: 8000, formats: [wav-mulaw], max_chars: 20}
"""
SCRIPTS = """\
scripts:
  - id: welcome
    text: "Welcome to Rime. Press one."
  - id: data
    text: "Our SQL tools. Rime's own."
"""


def write(folder: Path, name: str, content: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def manifest(folder: Path, lexicon: str, scripts: str = SCRIPTS) -> Path:
    return write(folder, "jobs.yaml", HEAD + lexicon + scripts)


def problem(path: Path) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        plan_manifest(path)
    return info.value


def texts(script: ScriptPlan) -> list[str]:
    return [s.text for s in script.segments]


def test_an_inline_lexicon_rewrites_every_script(tmp_path: Path) -> None:
    path = manifest(tmp_path, 'lexicon:\n  Rime: "{r1Ym}"\n  SQL: sequel\n')
    plan = plan_manifest(path)
    welcome, data = plan.scripts
    assert texts(welcome) == ["Welcome to {r1Ym}.", "Press one."]
    assert texts(data) == ["Our sequel tools.", "{r1Ym}'s own."]
    assert [s.lexicon_hits for s in plan.scripts] == [1, 2]


def test_yaml_and_csv_files_and_a_list_of_them(tmp_path: Path) -> None:
    write(tmp_path, "lex/brands.csv", 'word,replacement\nRime,{r1Ym}\n"New York","Noo York"\n')
    write(tmp_path, "lex/terms.yaml", "SQL: sequel\n")
    path = manifest(tmp_path, "lexicon: [lex/brands.csv, lex/terms.yaml, {one: won}]\n")
    welcome, data = plan_manifest(path).scripts
    assert texts(welcome) == ["Welcome to {r1Ym}.", "Press won."]
    assert texts(data) == ["Our sequel tools.", "{r1Ym}'s own."]


def test_a_script_s_own_lexicon_adds_to_the_job_s_and_wins(tmp_path: Path) -> None:
    scripts = SCRIPTS.replace(
        '    text: "Our SQL tools. Rime\'s own."',
        '    lexicon: {rime: rhyme, tools: tooling}\n    text: "Our SQL tools. Rime\'s own."',
    )
    path = manifest(tmp_path, 'lexicon: {Rime: "{r1Ym}", SQL: sequel}\n', scripts)
    welcome, data = plan_manifest(path).scripts
    assert texts(welcome) == ["Welcome to {r1Ym}.", "Press one."]
    assert texts(data) == ["Our sequel tooling.", "rhyme's own."]


def test_a_csv_manifest_row_names_its_own_lexicon_file(tmp_path: Path) -> None:
    write(tmp_path, "names.csv", "word,replacement\nOkafor,oh KAH for\n")
    path = write(
        tmp_path,
        "prompts.csv",
        'id,text,lexicon\na,"Ask Okafor.",names.csv\nb,"Ask Okafor.",\n',
    )
    a, b = plan_manifest(path).scripts
    assert texts(a) == ["Ask oh KAH for."]
    assert texts(b) == ["Ask Okafor."]


def test_only_segments_with_phonemes_read_phoneme_markup_and_others_keep_their_keys(
    tmp_path: Path,
) -> None:
    plain = plan_manifest(manifest(tmp_path / "plain", ""))
    lexed = plan_manifest(manifest(tmp_path / "lexed", 'lexicon: {Rime: "{r1Ym}", SQL: sequel}\n'))
    (w0, w1), (d0, d1) = (s.segments for s in lexed.scripts)
    (p_w0, p_w1), (p_d0, _) = (s.segments for s in plain.scripts)
    assert [w0.phonemes, w1.phonemes, d0.phonemes, d1.phonemes] == [True, False, False, True]
    # Untouched segments: the same key as without a lexicon (nothing to synthesize again).
    assert w1.cache_key == p_w1.cache_key
    # An alias changes the text, so the key; phonemes change the text and the request.
    assert d0.cache_key != p_d0.cache_key
    assert w0.cache_key != p_w0.cache_key
    params = lexed.scripts[0].params
    assert not params.phonemize_between_brackets  # the script's own stay as they were
    assert w0.request_params(params).phonemize_between_brackets
    assert w1.request_params(params) == params


def test_a_script_that_reads_phonemes_anyway_keeps_one_key_whatever_the_lexicon(
    tmp_path: Path,
) -> None:
    head = HEAD.replace("formats:", "phonemizeBetweenBrackets: true, formats:")
    path = write(tmp_path, "jobs.yaml", head + 'lexicon: {Rime: "{r1Ym}"}\n' + SCRIPTS)
    welcome = plan_manifest(path).scripts[0]
    assert [s.phonemes for s in welcome.segments] == [False, False]
    assert welcome.segments[0].request_params(welcome.params) == welcome.params


def test_phonemes_on_a_model_that_cannot_read_them_are_refused_with_the_remedy(
    tmp_path: Path,
) -> None:
    scripts = SCRIPTS.replace("  - id: data\n", "  - id: data\n    modelId: arcana\n")
    err = problem(manifest(tmp_path, 'lexicon:\n  Rime: "{r1Ym}"\n', scripts))
    assert (err.line, err.field) == (11, "scripts[1].text")
    assert "'Rime' the phonemes {r1Ym}" in err.message
    assert "jobs.yaml:5" in err.message  # where the entry was written
    assert "arcana does not read phoneme markup" in err.message
    assert "(line 1, column 16 of the text)" in err.message
    # The remedy works: the script's own alias.
    fixed = scripts.replace(
        "    modelId: arcana\n", "    modelId: arcana\n    lexicon: {Rime: rhyme}\n"
    )
    data = plan_manifest(manifest(tmp_path, 'lexicon:\n  Rime: "{r1Ym}"\n', fixed)).scripts[1]
    assert texts(data) == ["Our SQL tools.", "rhyme's own."]


def test_a_segmentation_problem_is_located_where_the_script_wrote_it(tmp_path: Path) -> None:
    scripts = 'scripts:\n  - id: a\n    max_chars: 12\n    text: "SQL is fine. Rime is"\n'
    err = problem(manifest(tmp_path, "lexicon: {Rime: Rimeyrimeyrimey}\n", scripts))
    assert "longer than the limit of 12" in err.message
    assert "(line 1, column 14 of the text)" in err.message


@pytest.mark.parametrize(
    ("lexicon", "where", "message"),
    [
        ("lexicon: {'': x}\n", (4, "lexicon."), "a key cannot be empty"),
        ("lexicon:\n  Rime: {r1Ym}\n", (5, "lexicon.Rime"), 'put phonemes in quotes, "{r1Ym}"'),
        ("lexicon:\n  Rime: '{r1m}'\n", (5, "lexicon.Rime"), "must come just before a vowel"),
        ("lexicon:\n  Rime: 3\n", (5, "lexicon.Rime"), "must be text"),
        ("lexicon:\n  rime: a\n  Rime: b\n", (6, "lexicon.Rime"), "differ only in letter case"),
        ("lexicon: 12\n", (4, "lexicon"), "must be a mapping of word: replacement"),
        ("lexicon: []\n", (4, "lexicon"), "must be a mapping of word: replacement"),
        ("lexicon: words.txt\n", (4, "lexicon"), "a lexicon file is .yaml, .yml or .csv"),
        ("lexicon: ../up.csv\n", (4, "lexicon"), "outside the manifest's folder"),
        ("lexicon: missing.csv\n", (4, "lexicon"), "does not exist"),
        ("lexicon: [{a: b}, 7]\n", (4, "lexicon[1]"), "must be a mapping of word: replacement"),
    ],
)
def test_inline_problems_are_located(
    tmp_path: Path, lexicon: str, where: tuple[int, str], message: str
) -> None:
    err = problem(manifest(tmp_path, lexicon))
    assert (err.file, err.line, err.field) == (str(tmp_path / "jobs.yaml"), *where)
    assert message in err.message


@pytest.mark.parametrize(
    ("name", "content", "where", "message"),
    [
        ("l.csv", "word,alias\nRime,rhyme\n", (1, None, None), "header word,replacement"),
        ("l.csv", "", (1, None, None), "header word,replacement"),
        ("l.csv", "word,replacement\n\nRime,rhyme,x\n", (3, 2, "Rime"), "the row has 3 cells"),
        ("l.csv", "word,replacement\nRime,{r1Yq}\n", (2, 1, "Rime"), "'q' at character 4"),
        ("l.csv", "word,replacement\nRime,a\nRime,b\n", (3, 2, "Rime"), "given twice"),
        ("l.csv", 'word,replacement\n"a\nb",c\n', (2, 1, "a\nb"), "control character"),
        ("l.yaml", "- Rime\n", (1, None, None), "a mapping of word: replacement"),
        ("l.yaml", "Rime: [a]\n", (1, None, "Rime"), "must be text"),
        ("l.yaml", "", (1, None, None), "the lexicon is empty"),
    ],
)
def test_file_problems_name_the_file_line_and_entry(
    tmp_path: Path,
    name: str,
    content: str,
    where: tuple[int, int | None, str | None],
    message: str,
) -> None:
    write(tmp_path, name, content)
    err = problem(manifest(tmp_path, f"lexicon: {name}\n"))
    assert (err.file, err.line, err.row, err.field) == (str(tmp_path / name), *where)
    assert message in err.message


def test_a_clash_between_two_files_names_the_later_entry_and_the_earlier_place(
    tmp_path: Path,
) -> None:
    write(tmp_path, "a.yaml", "rime: rhyme\n")
    write(tmp_path, "b.csv", "word,replacement\nRIME,R I M E\n")
    err = problem(manifest(tmp_path, "lexicon: [a.yaml, b.csv]\n"))
    assert (err.file, err.line, err.row) == (str(tmp_path / "b.csv"), 2, 1)
    assert f"{tmp_path / 'a.yaml'}:1" in err.message


def test_the_lexicon_of_a_spec_is_shared_by_its_scripts(tmp_path: Path) -> None:
    job = load_manifest(manifest(tmp_path, "lexicon: {SQL: sequel}\n"))
    first, second = job.scripts
    assert first.lexicon is second.lexicon is not None
    assert load_manifest(manifest(tmp_path / "none", "")).scripts[0].lexicon is None


def test_broken_markup_is_located_in_the_written_text_before_any_rewrite(tmp_path: Path) -> None:
    scripts = 'scripts:\n  - id: a\n    text: "SQL is < b"\n'
    err = problem(manifest(tmp_path, "lexicon: {SQL: sequel}\n", scripts))
    assert err.field == "scripts[0].text"
    assert "'<' that is not pause markup" in err.message
    assert "(line 1, column 8 of the text)" in err.message
