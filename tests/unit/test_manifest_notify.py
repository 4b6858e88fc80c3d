"""`notify:` in a manifest: the webhook URLs a job tells of its end, validated like every field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ManifestError
from pipeline.manifest import load_manifest
from pipeline.manifest.models import MAX_NOTIFY_URLS
from pipeline.plan import build_plan

SCRIPTS = "scripts:\n  - id: a\n    text: Hi.\n"


def manifest(tmp_path: Path, notify: str) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(f"job: n\n{notify}{SCRIPTS}", encoding="utf-8")
    return path


def error_of(path: Path) -> ManifestError:
    with pytest.raises(ManifestError) as raised:
        load_manifest(path)
    return raised.value


def test_one_url_or_a_list_lands_in_the_plans_options(tmp_path: Path) -> None:
    one = load_manifest(manifest(tmp_path, "notify: https://hooks.example.com/a\n"))
    assert one.notify == ("https://hooks.example.com/a",)

    listed = manifest(tmp_path, "notify:\n  - https://a.example.com/x\n  - http://b.example.com/\n")
    plan = build_plan(load_manifest(listed))
    assert plan.options.notify == ("https://a.example.com/x", "http://b.example.com/")
    assert plan.options.to_json()["notify"] == list(plan.options.notify)


def test_without_notify_nobody_is_told(tmp_path: Path) -> None:
    assert build_plan(load_manifest(manifest(tmp_path, ""))).options.notify == ()


@pytest.mark.parametrize(
    ("notify", "line", "field", "says"),
    [
        ("notify: ftp://example.com/x\n", 2, "notify", "must be an http:// or https:// URL"),
        (
            "notify:\n  - https://ok.example.com/\n  - file:///etc/passwd\n",
            4,
            "notify[1]",
            "not file",
        ),
        ("notify:\n  - https:///nohost\n", 3, "notify[0]", "names no host"),
        ("notify: 42\n", 2, "notify", "must be a URL or a list of URLs"),
        ("notify: {url: https://x.example.com/}\n", 2, "notify", "must be a URL or a list"),
        (
            "notify:\n  - https://x.example.com/a\n  - https://x.example.com/a\n",
            4,
            "notify[1]",
            "lists this URL twice",
        ),
    ],
)
def test_a_bad_url_is_located_by_line_and_field(
    tmp_path: Path, notify: str, line: int, field: str, says: str
) -> None:
    err = error_of(manifest(tmp_path, notify))
    assert (err.line, err.field) == (line, field)
    assert says in err.message


def test_at_most_so_many_urls(tmp_path: Path) -> None:
    urls = "".join(f"  - https://h{i}.example.com/\n" for i in range(MAX_NOTIFY_URLS + 1))
    err = error_of(manifest(tmp_path, f"notify:\n{urls}"))
    assert err.field == "notify"
    assert f"at most {MAX_NOTIFY_URLS}" in err.message


def test_an_error_never_shows_a_urls_path(tmp_path: Path) -> None:
    err = error_of(manifest(tmp_path, "notify: https://hooks.example.com:x/services/tok-9f8e7d\n"))
    assert "tok-9f8e7d" not in str(err)


def test_a_misspelt_key_suggests_notify(tmp_path: Path) -> None:
    err = error_of(manifest(tmp_path, "webhooks: https://x.example.com/\n"))
    assert "did you mean 'notify'?" in err.message
