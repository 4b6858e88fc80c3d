"""Manifests (YAML or CSV) to a typed, validated JobSpec.

    job: clinic-ivr              # default: the file's stem
    output: out/clinic           # relative to the manifest, or s3://bucket/prefix
    defaults: {speaker: cove, modelId: mistv2, samplingRate: 8000, formats: [wav-mulaw]}
    scripts:
      - id: welcome
        text: "Thank you for calling. <300> Your call is important to us."
      - id: chapter-01
        text_file: chapters/chapter-01.txt
        formats: [mp3]           # any default may be overridden per script

A script whose text_file is an EPUB, or that has `split:` (Markdown headings or a regex),
becomes one script per chapter, `<id>/<nn>-<slug>`, titled (`pipeline.manifest.chapters`,
`pipeline.manifest.epub`).

A CSV has a header with `id,text` and optional columns named like any setting (empty cells use
the default; lists are written `mp3|wav`). Its outputs go to `out/<stem>` beside it. A YAML
manifest may take its scripts from a CSV instead, with `scripts_csv: prompts.csv` in place of
`scripts` (`pipeline.manifest.linked`): job-wide defaults for a spreadsheet's prompts.

A `lexicon:` (job-wide, or a script's own) says how words are said: inline, or YAML and CSV
files (`pipeline.manifest.lexicons`); each script's spec carries its checked lexicon, which the
plan applies (`pipeline.lexicon`).
A `book:` section assembles the scripts (all, or those it names) into an audiobook once they are
stitched (`pipeline.manifest.book`); a script's `title:` is its chapter's title.

A manifest may be an `s3://bucket/prefix/jobs.yaml` object: its relative files, and a relative
`output`, are under its prefix (`pipeline.manifest.source`).

Overrides from the command line (`--set key=value`, `--voice-map old=new`) are applied as the
manifest is loaded, and validated with it (`pipeline.manifest.overrides`).

Every problem is one `ManifestError` naming the file, the line (and for CSV the data row) and
the field. Every limit (sizes, counts, nesting, the range of each setting) is in
`pipeline.manifest.models`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ManifestError
from pipeline.manifest.build import build_job
from pipeline.manifest.linked import with_csv_scripts
from pipeline.manifest.models import (
    MAX_MANIFEST_BYTES,
    Format,
    JobSpec,
    ScriptSpec,
    Source,
    Voice,
)
from pipeline.manifest.overrides import NO_OVERRIDES, Overrides
from pipeline.manifest.paths import describe_bad_byte
from pipeline.manifest.readers import RawManifest, read_csv, read_yaml
from pipeline.manifest.source import open_source, suffix, too_big

if TYPE_CHECKING:
    from pipeline.manifest.source import Folder

__all__ = ["Format", "JobSpec", "Overrides", "ScriptSpec", "Source", "Voice", "load_manifest"]

_READERS: dict[str, Callable[[str, str, Folder], RawManifest]] = {
    ".yaml": read_yaml,
    ".yml": read_yaml,
    ".csv": read_csv,
    # JSON is YAML's flow style: the same reader, with the same lines in its errors.
    ".json": read_yaml,
}


def load_manifest(
    path: Path | str,
    *,
    output: str | None = None,
    overrides: Overrides = NO_OVERRIDES,
    data: bytes | None = None,
) -> JobSpec:
    """Read and validate a manifest (a path, or an `s3://` URI given as a str); `output`
    replaces its destination, `overrides` change its defaults and speakers. With `data`, that
    is the manifest, read as if it were at `path`."""
    source = open_source(path)
    name = source.shown
    kind = suffix(source)
    reader = _READERS.get(kind.lower())
    if reader is None:
        raise ManifestError(
            f"unsupported manifest type {kind!r}; use .yaml, .yml, .json or .csv"
            if kind
            else "a manifest's name must end in .yaml, .yml, .json or .csv",
            file=name,
        )
    if data is None:
        data = source.read()
    if len(data) > MAX_MANIFEST_BYTES:
        raise too_big(len(data), name)
    try:
        text = data.decode("utf-8-sig")  # a BOM, as Excel writes one, is not data
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"the manifest is not UTF-8 text ({describe_bad_byte(data, exc)}); save it as UTF-8",
            file=name,
            line=data.count(b"\n", 0, exc.start) + 1,
        ) from exc
    raw = with_csv_scripts(reader(name, text, source.folder))
    return build_job(raw, recorded=source.recorded, output=output, overrides=overrides)
