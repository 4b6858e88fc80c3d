"""Generated hostile manifests: refused with one located line (exit 2), or planned and rendered
cleanly; never a traceback, and never a request for a manifest that is refused.

Most examples go through `plan_manifest`, the validation `plan`, `render` and `submit` share;
a few go through the real command line (`rime-batch plan` and `render` as subprocesses) against
an engine of their own, whose request counter says whether anything was sent.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.errors import InputError, ManifestError
from pipeline.manifest.characters import character_problem
from pipeline.markup import MAX_PAUSE_MS
from pipeline.plan import JobPlan, plan_manifest
from pipeline.rime.models import MODELS
from pipeline.storage.keys import output_key
from rime_local.server import RunningEngine
from tests.fixtures.books import rezip, write_book
from tests.fixtures.cli import Cli

FORMATS = ("wav", "wav-mulaw", "mulaw", "mp3", "ogg")

# Ids that collide once their formats are added (`x` as wav-mulaw is `x.mulaw` as wav), differ
# only in case, make a folder of another's file, or are unsafe.
_IDS = st.sampled_from(
    ["a", "A", "a.wav", "a.wav/b", "x", "x.mulaw", "b/c", "B/C", "c.mp3", "cache/x", "../up"]
)
_HUGE = st.sampled_from([10**30, -(10**30), 1e300, 1e308, -1e308, "1e300", "9" * 400])
_NUMBERS = st.one_of(
    st.booleans(),
    _HUGE,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6),
    st.sampled_from(["", "fast", "1,5", "0x10"]),
)
_PAUSES = st.one_of(
    st.integers(0, MAX_PAUSE_MS + 10), st.sampled_from([86_400_000, 99_999_999_999])
)
_CUTS = st.sampled_from([". ", ", ", " ", "\n\n", "\t", "\r\n"])


def _joined(parts: list[str]) -> str:
    return "".join(parts)


# Texts: prose that renders, and pieces that must be refused (pauses past the limit, nested
# brackets, invisible and control characters, lone surrogates, stray markup).
_PROSE_PIECES = st.one_of(
    st.sampled_from(["Hello there", "One", "two", "Dr. Smith", "2.5ml", "$1,000.50"]),
    st.integers(0, 2000).map(lambda ms: f"<{ms}>"),
)
_HOSTILE_PIECES = st.one_of(
    _PAUSES.map(lambda ms: f"<{ms}>"),
    # Side by side, each within the limit: together they are one pause, over it.
    st.integers(2, MAX_PAUSE_MS).map(lambda ms: f"<{ms}> <{MAX_PAUSE_MS - 1}>"),
    st.integers(1, 20_000).map(lambda n: "[" * n),
    st.sampled_from(["\u200b", "\ufeff", "\u2060", "\x07", "\x1b[31m", "\x7f", "\x00", "\x85"]),
    st.sampled_from(["\ud800", "\udfff", "<>", "a < b", "{", "]", "[slow]"]),
)


def _texts(pieces: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(st.tuples(pieces, _CUTS).map(_joined), min_size=1, max_size=6).map(_joined)


_PROSE = _texts(_PROSE_PIECES).filter(lambda t: any(c.isalpha() for c in t))
_HOSTILE_TEXTS = _texts(_PROSE_PIECES | _HOSTILE_PIECES) | st.sampled_from(["", " ", "<250>"])

# Settings as a careful manifest writes them, and as a hostile one does.
_VALID: dict[str, st.SearchStrategy[Any]] = {
    "speed": st.floats(0.25, 4.0),
    "temperature": st.floats(0, 2),
    "pause_ms": st.sampled_from([0, 250, MAX_PAUSE_MS]),
    "samplingRate": st.sampled_from([8000, 22050, 44100]),
    "max_chars": st.integers(30, 500),
    "formats": st.lists(st.sampled_from(FORMATS), min_size=1, max_size=3, unique=True),
    "lang": st.just("eng"),
    "speaker": st.sampled_from(["cove", "marsh"]),
}
_HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "speed": _NUMBERS,
    "temperature": _NUMBERS,
    "top_p": _NUMBERS,
    "repetition_penalty": _NUMBERS,
    "pause_ms": _PAUSES | _NUMBERS,
    "paragraph_pause_ms": _PAUSES,
    "samplingRate": _NUMBERS,
    "max_chars": st.integers(-5, 1200) | _NUMBERS,
    "inlineSpeedAlpha": st.lists(st.floats(0.25, 4) | _NUMBERS, max_size=3) | _NUMBERS,
    "formats": st.lists(st.text(max_size=5), max_size=2) | _NUMBERS,
    "lang": st.sampled_from(["xyz", "", "e\x07ng", "spa"]),
    "modelId": st.sampled_from(["mistv9", True, ""]),
    "speaker": st.sampled_from(["", "cove\x00", "c\ud800ve", "x" * 200]),
    "outputs": st.just("a key nobody knows"),
}


@st.composite
def _documents(
    draw: st.DrawFn,
    *,
    texts: st.SearchStrategy[str],
    ids: st.SearchStrategy[Any],
    changes: st.SearchStrategy[int] = st.integers(0, 3),
) -> str:
    """A careful YAML manifest with a few hostile changes, as text."""
    valid = st.fixed_dictionaries({}, optional=_VALID)
    defaults: dict[str, Any] = draw(valid)
    # Ids from the pool that collides or ones that cannot; texts hostile or prose.
    pooled, hostile = draw(st.booleans()), draw(st.booleans())
    scripts: list[dict[str, Any]] = [
        {
            "id": draw(ids) if pooled else f"s{i}",
            "text": draw(texts if hostile else _PROSE),
            **draw(valid),
        }
        for i in range(draw(st.integers(1, 4)))
    ]
    for _ in range(draw(changes)):
        target = draw(st.sampled_from([defaults, *scripts]))
        kind = draw(st.sampled_from(["setting", "text", "text", "id"]))
        if kind == "setting" or target is defaults:
            name = draw(st.sampled_from(sorted(_HOSTILE)))
            target[name] = draw(_HOSTILE[name])
        else:
            target[kind] = draw(texts if kind == "text" else ids)
    doc = {"output": "out", "defaults": defaults, "scripts": scripts}
    return yaml.safe_dump(doc, allow_unicode=False, sort_keys=False)


@st.composite
def _alias_bombs(draw: st.DrawFn) -> str:
    """Anchors that each repeat the one before: small files, up to millions of values."""
    width, depth = draw(st.integers(2, 10)), draw(st.integers(1, 6))
    lines = ["x0: &x0 [" + ", ".join(['"Hello there."'] * width) + "]"]
    for level in range(1, depth + 1):
        lines.append(f"x{level}: &x{level} [" + ", ".join([f"*x{level - 1}"] * width) + "]")
    where = draw(st.sampled_from(["scripts: *x{d}", "defaults: {{speaker: *x{d}}}"]))
    return "\n".join(lines) + "\n" + where.format(d=depth) + "\n"


_NESTING = st.integers(30, 20_000).map(lambda n: "scripts: " + "[" * n + "]" * n + "\n")


@st.composite
def _csvs(draw: st.DrawFn, *, texts: st.SearchStrategy[str]) -> bytes:
    """A CSV manifest, with a setting column; surrogates make it invalid UTF-8."""
    column = draw(st.sampled_from(["speed", "pause_ms", "formats", "max_chars"]))
    rows = [["id", "text", column]]
    for _ in range(draw(st.integers(1, 4))):
        value = draw(_VALID.get(column, st.nothing()) | _HOSTILE[column])
        rows.append(
            [draw(_IDS), draw(texts), "|".join(value) if isinstance(value, list) else value]
        )
    out = io.StringIO(newline="")
    csv.writer(out).writerows(rows)
    return out.getvalue().encode("utf-8", "surrogatepass")


def _cell(value: Any) -> str:
    return "|".join(map(str, value)) if isinstance(value, list) else str(value)


def _manifests(
    texts: st.SearchStrategy[str], ids: st.SearchStrategy[Any]
) -> st.SearchStrategy[tuple[str, bytes]]:
    yaml_docs = _documents(texts=texts, ids=ids) | _alias_bombs() | _NESTING
    return st.one_of(
        yaml_docs.map(lambda text: ("job.yaml", text.encode())),
        _csvs(texts=texts).map(lambda data: ("job.csv", data)),
    )


# In process: arbitrary unicode anywhere a text or an id goes, as well as the hostile parts.
_ANY_TEXTS = _HOSTILE_TEXTS | st.text(max_size=40)
_ANY_IDS = _IDS | st.text(max_size=12)
# Through the command line, valid manifests must render: every text speakable by the engine.
_CLI_TEXTS = _HOSTILE_TEXTS

_folders = itertools.count()


def _write(root: Path, manifest: tuple[str, bytes]) -> Path:
    folder = root / f"m{next(_folders)}"
    folder.mkdir()
    path = folder / manifest[0]
    path.write_bytes(manifest[1])
    return path


def _validate(path: Path) -> JobPlan | ManifestError:
    """The plan, or the one error; any other exception fails the test."""
    try:
        return plan_manifest(path)
    except InputError as exc:
        assert isinstance(exc, ManifestError), repr(exc)
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        message.encode("utf-8")  # printable as it is
        assert message.startswith(f"{path}:"), message
        return exc


_PAUSE_RUN = re.compile(r"(?:<[0-9]+>\s*)+")
_PAUSE_MS = re.compile(r"<([0-9]+)>")


def _assert_sound(plan: JobPlan) -> None:
    """What a plan that passed validation promises every later stage."""
    files: set[str] = set()
    folders: set[str] = set()
    for script in plan.scripts:
        assert script.lead_pause_ms <= MAX_PAUSE_MS
        model = MODELS[script.params.model_id]
        assert script.params.lang in model.languages
        for segment in script.segments:
            assert 1 <= len(segment.text) <= model.max_chars
            assert 0 <= segment.pause_after_ms <= MAX_PAUSE_MS
            assert character_problem(segment.text, text=True) is None
            # Pauses left inside a request are Rime's to make: each run of them is one pause.
            for run in _PAUSE_RUN.finditer(segment.text):
                assert sum(map(int, _PAUSE_MS.findall(run.group()))) <= MAX_PAUSE_MS, run
        for value in (script.params.speaker, script.script_id):
            assert character_problem(value, text=False) is None
        for fmt in script.output.formats:
            key = output_key(script.script_id, fmt).casefold()
            parts = key.split("/")
            prefixes = {"/".join(parts[:n]) for n in range(1, len(parts))}
            assert key not in files and key not in folders, key
            assert not prefixes & files, key
            files.add(key)
            folders |= prefixes


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(manifest=_manifests(_ANY_TEXTS, _ANY_IDS))
def test_validation_refuses_with_one_line_or_plans_soundly(
    tmp_path: Path, manifest: tuple[str, bytes]
) -> None:
    result = _validate(_write(tmp_path, manifest))

    event("planned" if isinstance(result, JobPlan) else "refused")
    if isinstance(result, JobPlan):
        _assert_sound(result)


_UNIQUE_IDS = st.uuids().map(lambda u: f"p/{u.hex[:12]}")
_CAREFUL = _documents(texts=_PROSE, ids=_UNIQUE_IDS, changes=st.just(0)).map(
    lambda text: ("job.yaml", text.encode())
)


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# A careful manifest beside each hostile one, so the rendering side is seen in every run.
@given(manifests=st.tuples(_CAREFUL, _manifests(_CLI_TEXTS, _IDS)))
def test_the_command_line_refuses_before_sending_or_renders(
    tmp_path: Path,
    cli: Cli,
    engine_factory: Callable[..., RunningEngine],
    manifests: tuple[tuple[str, bytes], tuple[str, bytes]],
) -> None:
    engine = engine_factory()  # its own request counter
    for manifest in manifests:
        path = _write(tmp_path, manifest)
        expected = _validate(path)
        before = engine.metrics()["requests"]

        planned = cli.using(engine=engine).run("plan", path)
        rendered = cli.using(engine=engine).run("render", path)

        for result in (planned, rendered):
            assert "Traceback" not in result.output, result
        event("refused" if isinstance(expected, ManifestError) else "rendered")
        if isinstance(expected, ManifestError):
            for result in (planned, rendered):
                assert result.returncode == 2, result
                assert result.stderr.strip().splitlines() == [f"error: {expected}"], result
            assert engine.metrics()["requests"] == before
            continue
        assert (planned.returncode, rendered.returncode) == (0, 0), rendered
        keys = [output_key(s.script_id, f) for s in expected.scripts for f in s.output.formats]
        assert all((Path(expected.destination) / key).is_file() for key in keys), keys
        results = json.loads((Path(expected.destination) / "results.json").read_text())
        uris = [o["uri"] for s in results["scripts"] for o in s["outputs"]]
        assert len(set(uris)) == len(uris) == len(keys), uris  # no file listed twice


# --- books: EPUBs broken in generated ways, and long texts split by hostile rules -----------

_BODIES = st.one_of(
    _PROSE.map(lambda t: f"<p>{html.escape(t, quote=False)}</p>"),
    # Unescaped text: markup's characters, and what is not XML at all.
    _ANY_TEXTS.map(lambda t: f"<p>{t}</p>"),
    st.sampled_from(
        [
            "<p/>",
            "<img src='x.png'/>",
            "<h1>Only a heading</h1>",
            "<p>&nbsp;&amp;&undefined;</p>",
            "<div><p>unclosed</div>",
            "<aside epub:type='footnote'><p>Only a note.</p></aside>",
            "<p>" + "<span>" * 300 + "deep" + "</span>" * 300 + "</p>",
        ]
    ),
)
# Titles ebooklib can write (XML holds no control characters or lone surrogates).
_TITLES = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=20)
_BREAKAGES = st.sampled_from(
    ["none", "drop", "garbage", "truncate", "rights", "encryption", "empty spine", "bad idref"]
)


@st.composite
def _books(draw: st.DrawFn) -> tuple[list[tuple[str, str]], str, list[bool], int]:
    chapters = [(draw(_TITLES), draw(_BODIES)) for _ in range(draw(st.integers(1, 4)))]
    listed = [draw(st.booleans()) for _ in chapters]
    return chapters, draw(_BREAKAGES), listed, draw(st.integers(0, 1 << 16))


def _break(book: Path, target: Path, breakage: str, seed: int) -> None:
    with zipfile.ZipFile(book) as archive:
        names = archive.namelist()
        opf_name = next(n for n in names if n.endswith(".opf"))
        opf = archive.read(opf_name)
    name = names[seed % len(names)]
    if breakage == "none":
        rezip(book, target)
    elif breakage == "drop":
        rezip(book, target, drop=[name])
    elif breakage == "garbage":
        rezip(book, target, replace={name: seed.to_bytes(3, "big") * 7})
    elif breakage == "truncate":
        data = book.read_bytes()
        target.write_bytes(data[: seed % len(data)])
    elif breakage == "rights":
        rezip(book, target, replace={"META-INF/rights.xml": b"<rights/>"})
    elif breakage == "encryption":
        rezip(book, target, replace={"META-INF/encryption.xml": b"<not closed"})
    elif breakage == "empty spine":
        spine = re.sub(rb"<spine([^>]*)>.*</spine>", rb"<spine\1></spine>", opf, flags=re.S)
        rezip(book, target, replace={opf_name: spine})
    else:
        rezip(book, target, replace={opf_name: opf.replace(b'idref="', b'idref="x', 1)})


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(book=_books(), split=st.sampled_from([None, "headings", "{regex: '^('}", "{regex: 'a'}"]))
def test_a_hostile_book_is_refused_with_one_line_or_plans_soundly(
    tmp_path: Path, book: tuple[list[tuple[str, str]], str, list[bool], int], split: str | None
) -> None:
    chapters, breakage, listed, seed = book
    folder = tmp_path / f"m{next(_folders)}"
    folder.mkdir()
    good = write_book(folder / "good.epub", chapters, in_toc=listed)
    _break(good, folder / "book.epub", breakage, seed)
    (folder / "text.md").write_text("".join(t for t, _ in chapters) or "#", encoding="utf-8")
    entries = "  - id: book\n    text_file: book.epub\n"
    if split is not None:
        entries += f"  - id: notes\n    text_file: text.md\n    split: {split}\n"
    path = folder / "job.yaml"
    path.write_text(f"output: out\nscripts:\n{entries}", encoding="utf-8")

    result = _validate(path)

    event(f"{breakage}: {'planned' if isinstance(result, JobPlan) else 'refused'}")
    if isinstance(result, JobPlan):
        _assert_sound(result)
        for script in result.scripts:
            assert not any(c in s.text for s in script.segments for c in "<>[]{}") or (
                script.script_id.startswith("notes/")
            )


@pytest.mark.parametrize("breakage", ["truncate", "rights"])
def test_the_command_line_refuses_a_bad_book_before_sending(
    tmp_path: Path, cli: Cli, engine_factory: Callable[..., RunningEngine], breakage: str
) -> None:
    engine = engine_factory()
    good = write_book(tmp_path / "good.epub")
    _break(good, tmp_path / "book.epub", breakage, 100)
    path = tmp_path / "job.yaml"
    path.write_text("scripts:\n  - id: book\n    text_file: book.epub\n", encoding="utf-8")
    expected = _validate(path)
    assert isinstance(expected, ManifestError)

    for command in ("plan", "render"):
        result = cli.using(engine=engine).run(command, path)
        assert result.returncode == 2, result
        assert result.stderr.strip().splitlines() == [f"error: {expected}"], result
    assert engine.metrics()["requests"] == 0
