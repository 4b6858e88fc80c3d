"""Names and paths in a manifest: script ids, text files, the destination.

Script ids become file names and S3 keys (`<destination>/<id>.<ext>`), so an id is one or more
parts joined by `/` (sub-folders), each part made of ASCII letters, digits, `.`, `_` and `-` and
starting with a letter, digit or `_`. That rules out `.`, `..`, hidden files, absolute paths,
backslashes, whitespace and control characters, and stays within 200 characters.

Text files are read relative to the manifest's folder (or S3 prefix, `pipeline.manifest.source`)
and must stay inside it, symlinks included: a manifest handed to a renderer cannot read files it
was not shipped with.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from pipeline.manifest.models import MAX_ID_CHARS, MAX_OUTPUT_CHARS, MAX_TEXT_FILE_BYTES
from pipeline.storage.keys import RESERVED_NAMES

if TYPE_CHECKING:
    from pipeline.manifest.source import Folder

_ID_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_S3_URL = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?")


class PathProblem(ValueError):
    """A name or path the manifest cannot use; the message says why."""


def check_script_id(script_id: str) -> None:
    """Raise PathProblem unless `script_id` is safe as a relative file path and S3 key."""
    if not script_id:
        raise PathProblem("is empty")
    if len(script_id) > MAX_ID_CHARS:
        raise PathProblem(f"is {len(script_id)} characters long; the limit is {MAX_ID_CHARS}")
    if any(ch.isspace() or not ch.isprintable() for ch in script_id):
        raise PathProblem(f"{script_id!r} contains whitespace or a control character")
    if "\\" in script_id:
        raise PathProblem(f"{script_id!r} contains '\\'; use '/' to make sub-folders")
    if script_id.startswith("/"):
        raise PathProblem(f"{script_id!r} must be relative: remove the leading '/'")
    for part in script_id.split("/"):
        if not part:
            raise PathProblem(f"{script_id!r} has an empty part ('//' or a trailing '/')")
        if part in {".", ".."}:
            raise PathProblem(f"{script_id!r} must not contain {part!r} as a path part")
        if not _ID_PART.fullmatch(part):
            raise PathProblem(
                f"{script_id!r} may use only letters, digits, '.', '_' and '-' (with '/' "
                "between sub-folders), and each part must start with a letter, digit or '_'"
            )
    # The destination also holds the segment cache, the releases and the results file.
    if script_id.split("/")[0].lower() in RESERVED_NAMES:
        raise PathProblem(
            f"{script_id!r} starts with {script_id.split('/')[0]!r}, which is reserved"
        )


def default_job_name(manifest: Path | str) -> str:
    """The manifest's file stem (of a path or an s3:// URI), with characters unsafe in names
    replaced by '-'."""
    name = PurePosixPath(str(manifest)).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "job"


def normalize_text(text: str) -> str:
    """Script text as rendered: \\n newlines, no surrounding whitespace."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def read_text_file(
    relative: str, folder: Folder, *, limit: int = MAX_TEXT_FILE_BYTES, what: str = "a text file"
) -> str:
    """The UTF-8 text of `relative`, a file inside `folder` of at most `limit` bytes;
    PathProblem when it can't be."""
    data = folder.read(relative, limit=limit, what=what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PathProblem(
            f"{relative!r} is not UTF-8 text ({describe_bad_byte(data, exc)}); save it as UTF-8"
        ) from exc


def relative_key(relative: str) -> str:
    """`relative` normalized (`a/./b/../c` -> `a/c`) once it names a place inside the
    manifest's folder: not empty, not absolute, not above the folder; PathProblem otherwise."""
    if not relative.strip():
        raise PathProblem("is empty")
    if Path(relative).is_absolute() or relative.startswith(("/", "\\")):
        raise PathProblem(
            f"{relative!r} is absolute; give a path relative to the manifest's folder"
        )
    key = posixpath.normpath(relative)
    if key == ".." or key.startswith("../"):
        raise PathProblem(f"{relative!r} points outside the manifest's folder")
    return key


def file_inside(relative: str, folder: Path, *, limit: int, what: str) -> Path:
    """The path of `relative`, an existing file inside `folder` of at most `limit` bytes;
    PathProblem when it is not."""
    root = folder.resolve()
    lexical = Path(os.path.normpath(root / relative_key(relative)))
    if not lexical.is_relative_to(root):
        raise PathProblem(f"{relative!r} points outside the manifest's folder")
    target = lexical.resolve()
    if not target.is_relative_to(root):
        raise PathProblem(f"{relative!r} is a link to a file outside the manifest's folder")
    if not target.exists():
        raise PathProblem(f"{relative!r} does not exist")
    if not target.is_file():
        raise PathProblem(f"{relative!r} is not a file")
    try:
        size = target.stat().st_size
    except OSError as exc:
        raise PathProblem(f"{relative!r} cannot be read: {exc.strerror}") from exc
    if size > limit:
        raise PathProblem(f"{relative!r} is {size:,} bytes; {what} may hold at most {limit:,}")
    return target


def describe_bad_byte(data: bytes, exc: UnicodeDecodeError) -> str:
    """Which byte broke decoding, and on which line, for an error message."""
    line = data.count(b"\n", 0, exc.start) + 1
    return f"byte 0x{data[exc.start]:02x} on line {line}"


def resolve_destination(value: str, base: Path | str) -> str:
    """An absolute local folder, or a normalized S3 URL. A relative path starts at `base`: a
    folder, or the `s3://bucket/prefix` of a manifest in S3 (under which it stays)."""
    value = value.strip()
    if not value:
        raise PathProblem("is empty")
    if len(value) > MAX_OUTPUT_CHARS:
        raise PathProblem(f"is {len(value):,} characters long; the limit is {MAX_OUTPUT_CHARS}")
    if value[:5].lower() == "s3://":
        match = _S3_URL.fullmatch(value)
        if match is None:
            raise PathProblem(f"{value!r} is not a valid S3 location; expected s3://bucket/prefix")
        prefix = (match["prefix"] or "").strip("/")
        if any(part in {"", ".", ".."} for part in prefix.split("/")) and prefix:
            raise PathProblem(f"{value!r} has an empty, '.' or '..' part in its prefix")
        return f"s3://{match['bucket']}/{prefix}" if prefix else f"s3://{match['bucket']}"
    if "://" in value:
        raise PathProblem(f"{value!r}: only local folders and s3://bucket/prefix are supported")
    local = Path(value).expanduser()
    if isinstance(base, str) and not local.is_absolute():
        bucket, _, prefix = base.removeprefix("s3://").partition("/")
        key = posixpath.normpath(posixpath.join(prefix, value))
        if key == ".." or key.startswith("../"):
            raise PathProblem(f"{value!r} points above the root of bucket {bucket!r}")
        return resolve_destination(f"s3://{bucket}/{'' if key == '.' else key}", base)
    return str((Path(base) / local).resolve())


def check_local_outputs(folder: Path, keys: Iterable[str]) -> None:
    """PathProblem when `folder`, or an output key under it, is held by a file or a folder.

    A render would find out only after its requests were billed: a destination that is a file,
    a key's folder that is a file, or a key that is an existing folder.
    """
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "" if blocker == folder else f" inside {str(blocker)!r}"
        raise PathProblem(f"{str(folder)!r} is{where} a file, not a folder")
    if blocker != folder:
        return  # nothing exists under a folder yet to be made
    looked: set[Path] = set()
    for key in keys:
        path = folder.joinpath(*key.split("/"))
        if path.is_dir():
            raise PathProblem(f"output {key!r} is an existing folder in {str(folder)!r}")
        for parent in path.parents:
            if parent == folder or parent in looked:
                break
            looked.add(parent)
            if parent.exists() and not parent.is_dir():
                raise PathProblem(f"output {key!r} needs a folder where {str(parent)!r} is a file")
