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

Overrides from the command line (`--set key=value`, `--voice-map old=new`) are applied as the
manifest is loaded, and validated with it (`pipeline.manifest.overrides`).

Every problem is one `ManifestError` naming the file, the line (and for CSV the data row) and
the field. Every limit (sizes, counts, nesting, the range of each setting) is in
`pipeline.manifest.models`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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

__all__ = ["Format", "JobSpec", "Overrides", "ScriptSpec", "Source", "Voice", "load_manifest"]

_READERS: dict[str, Callable[[Path, str], RawManifest]] = {
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
    """Read and validate a manifest; `output` replaces its destination, `overrides` change its
    defaults and speakers. With `data`, that is the manifest, read as if it were at `path`."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ManifestError(
            f"unsupported manifest type {path.suffix!r}; use .yaml, .yml, .json or .csv"
            if path.suffix
            else "a manifest's name must end in .yaml, .yml, .json or .csv",
            file=path,
        )
    if data is None:
        data = _read(path)
    if len(data) > MAX_MANIFEST_BYTES:
        raise _too_big(len(data), path)
    try:
        text = data.decode("utf-8-sig")  # a BOM, as Excel writes one, is not data
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"the manifest is not UTF-8 text ({describe_bad_byte(data, exc)}); save it as UTF-8",
            file=path,
            line=data.count(b"\n", 0, exc.start) + 1,
        ) from exc
    return build_job(with_csv_scripts(reader(path, text)), output=output, overrides=overrides)


def _read(path: Path) -> bytes:
    if not path.exists():
        raise ManifestError("the file does not exist", file=path)
    if not path.is_file():
        raise ManifestError("is not a file", file=path)
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:  # refused before it is read into memory
        raise _too_big(size, path)
    return path.read_bytes()


def _too_big(size: int, path: Path) -> ManifestError:
    return ManifestError(
        f"the manifest is {size:,} bytes; the limit is {MAX_MANIFEST_BYTES:,} "
        "(put long texts in text files)",
        file=path,
    )
