"""A manifest's place: the rules of relative paths (shared by a local folder and an S3 prefix),
a relative output under an S3 manifest's prefix, the default job name of a URI, and boto3 left
unloaded by a local manifest."""

from __future__ import annotations

import posixpath
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.manifest import load_manifest
from pipeline.manifest.paths import (
    PathProblem,
    default_job_name,
    relative_key,
    resolve_destination,
)
from pipeline.manifest.source import is_s3, open_source

ROOT = Path(__file__).resolve().parents[2]
_PARTS = st.sampled_from(["a", "b.txt", "..", ".", "", "sub", "~", " x"])
_RELATIVE = st.lists(_PARTS, min_size=1, max_size=6).map("/".join)


@given(_RELATIVE)
def test_a_relative_key_never_leaves_its_folder(relative: str) -> None:
    try:
        key = relative_key(relative)
    except PathProblem as exc:
        assert relative in str(exc) or str(exc) == "is empty"
        lexical = posixpath.normpath(posixpath.join("/root/x", relative))
        # Refused: it was empty, absolute, or above the folder.
        assert (
            not relative.strip()
            or relative.startswith("/")
            or not (lexical + "/").startswith("/root/x/")
        )
        return
    assert not key.startswith("/")
    assert ".." not in key.split("/")
    # The key names the same place the path does, under any folder.
    assert posixpath.normpath(posixpath.join("/root/x", key)) == posixpath.normpath(
        posixpath.join("/root/x", relative)
    )


@given(_RELATIVE, st.sampled_from(["", "p", "p/q", "shows/april/week-1"]))
def test_a_relative_output_of_an_s3_manifest_stays_in_its_bucket(value: str, prefix: str) -> None:
    base = f"s3://bucket-1/{prefix}" if prefix else "s3://bucket-1"
    if value.startswith("/") or value.startswith("~") or not value.strip():
        return  # a local folder, or nothing: not the S3 rule
    try:
        found = resolve_destination(value, base)
    except PathProblem as exc:
        assert "points above the root of bucket 'bucket-1'" in str(exc)
        lexical = posixpath.normpath(posixpath.join("/r", prefix, value.strip()))
        assert lexical != "/r" and not lexical.startswith("/r/")
        return
    assert found == resolve_destination(found, "/elsewhere")  # already normal
    key = posixpath.normpath(posixpath.join(prefix, value.strip()))  # as written, trimmed
    assert found == ("s3://bucket-1" if key == "." else f"s3://bucket-1/{key}")


def test_outputs_of_an_s3_manifest_resolve_as_written() -> None:
    base = "s3://media/shows/april"
    assert resolve_destination("out", base) == "s3://media/shows/april/out"
    assert resolve_destination("../may/out", base) == "s3://media/shows/may/out"
    assert resolve_destination("s3://other/x/", base) == "s3://other/x"
    assert resolve_destination("/srv/audio", base) == "/srv/audio"
    with pytest.raises(PathProblem, match="above the root of bucket 'media'"):
        resolve_destination("../../../out", base)


def test_a_uri_names_its_job_and_is_told_from_a_path() -> None:
    assert default_job_name("s3://media/shows/my prompts.yaml") == "my-prompts"
    assert default_job_name(Path("/srv/my prompts.yaml")) == "my-prompts"
    assert is_s3("s3://media/jobs.yaml") and is_s3("S3://media/jobs.yaml")
    # A Path folds `//`: it is always a local file, never mistaken for a URI.
    assert not is_s3(Path("s3://media/jobs.yaml")) and not is_s3("jobs.yaml")
    source = open_source("nested/jobs.yaml")
    assert (source.shown, source.recorded) == (
        "nested/jobs.yaml",
        str(Path.cwd() / "nested/jobs.yaml"),
    )


def test_a_local_manifest_never_loads_boto3(tmp_path: Path) -> None:
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("Hello there.")
    path = tmp_path / "jobs.yaml"
    path.write_text("scripts:\n  - id: a\n    text_file: texts/a.txt\n")
    assert load_manifest(path).scripts[0].text == "Hello there."
    program = (
        "import sys\nfrom pipeline.manifest import load_manifest\n"
        f"load_manifest({str(path)!r})\n"
        "print('boto3' in sys.modules, 'botocore' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.stdout.split() == ["False", "False"], done
