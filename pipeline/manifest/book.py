"""The manifest's `book:` section: a book assembled from the job's scripts.

    book:
      title: The Lighthouse
      author: A. Writer
      narrator: B. Reader
      year: 2026
      cover: cover.jpg            # JPEG or PNG, relative to the manifest
      scripts: [intro, "part1/*", part2/]   # ids, globs or folder prefixes; default: all
      folder: book                # where its files go (default: book)

Each entry of `scripts` adds the scripts it names in manifest order, each script once, at its
first mention: an exact id, a glob (`*`, `?`, `[...]`) or a prefix ending in '/'. An entry that
adds nothing (an unknown id, a glob that matches only scripts already in the book) is refused.
"""

from __future__ import annotations

import fnmatch
import struct
from typing import Any

from pipeline.manifest.models import (
    MAX_COVER_BYTES,
    MAX_SCRIPTS,
    MAX_TITLE_CHARS,
    BookSpec,
    ScriptSpec,
    Source,
)
from pipeline.manifest.paths import PathProblem, check_script_id
from pipeline.manifest.readers import Loc, RawManifest, unknown_key_message
from pipeline.storage.keys import DEFAULT_BOOK_FOLDER

BOOK_KEYS = ("title", "author", "narrator", "year", "cover", "scripts", "folder")
_GLOB = frozenset("*?[")
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
# JPEG start-of-frame markers (baseline, progressive, ...), which carry the image's size.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def check_title(value: Any, where: Source) -> str:
    """A title (or name) as written: non-empty text of at most 200 printable characters."""
    if not isinstance(value, str) or not value.strip():
        raise where.error("must be a non-empty text")
    if len(value) > MAX_TITLE_CHARS:
        raise where.error(f"is {len(value)} characters long; the limit is {MAX_TITLE_CHARS}")
    if not value.isprintable():
        raise where.error("contains a control character (a line break, a tab)")
    return value.strip()


def read_book(raw: RawManifest, scripts: list[ScriptSpec], job_name: str) -> BookSpec | None:
    """The validated `book:` section, or None when the manifest has none."""
    data = raw.data.get("book")
    if data is None:
        return None
    at = raw.locator.source

    def where(*loc: str | int) -> Source:
        return at(("book", *loc))

    if not isinstance(data, dict):
        raise where().error("must be a mapping (title, author, cover, scripts, ...)")
    for key in data:
        if key not in BOOK_KEYS:
            raise where(key).error(unknown_key_message(str(key), BOOK_KEYS))
    title = check_title(data["title"], where("title")) if "title" in data else job_name
    names = {
        key: check_title(data[key], where(key))
        for key in ("author", "narrator")
        if data.get(key) is not None
    }
    cover, cover_type = _cover(raw, data.get("cover"), where("cover"))
    return BookSpec(
        title=title,
        scripts=_chapters(data.get("scripts"), scripts, where, ("scripts",)),
        folder=_folder(data.get("folder", DEFAULT_BOOK_FOLDER), where("folder")),
        author=names.get("author"),
        narrator=names.get("narrator"),
        year=_year(data.get("year"), where("year")),
        cover=cover,
        cover_type=cover_type,
    )


def _chapters(value: Any, scripts: list[ScriptSpec], where: Any, loc: Loc) -> tuple[str, ...]:
    ids = [s.id for s in scripts]
    if value is None:
        return tuple(ids)
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not entries:
        raise where(*loc).error("must be a list of script ids, globs or folder prefixes")
    if len(entries) > MAX_SCRIPTS:
        raise where(*loc).error(f"lists more than {MAX_SCRIPTS:,} entries")
    chosen: dict[str, None] = {}
    for index, entry in enumerate(entries):
        place = where(*loc) if isinstance(value, str) else where(*loc, index)
        if not isinstance(entry, str) or not entry.strip():
            raise place.error("must be a script id, a glob or a folder prefix ending in '/'")
        matched = _matching(entry.strip(), ids)
        if not matched:
            raise place.error(f"{entry!r} matches no script of this manifest")
        new = [i for i in matched if i not in chosen]
        if not new:
            raise place.error(f"{entry!r} adds no script: each one it names is in the book already")
        chosen.update(dict.fromkeys(new))
    return tuple(chosen)


def _matching(entry: str, ids: list[str]) -> list[str]:
    if entry.endswith("/"):
        return [i for i in ids if i.startswith(entry)]
    if _GLOB & set(entry):
        return [i for i in ids if fnmatch.fnmatchcase(i, entry)]
    return [entry] if entry in ids else []


def _folder(value: Any, where: Source) -> str:
    if not isinstance(value, str):
        raise where.error("must be a folder name, e.g. book or audiobook/full")
    folder = value.strip().rstrip("/")
    try:
        check_script_id(folder)
    except PathProblem as exc:
        raise where.error(str(exc)) from exc
    return folder


def _year(value: Any, where: Source) -> str | None:
    if value is None:
        return None
    text = (
        str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    )
    if not (len(text) == 4 and text.isdigit()):
        raise where.error(f"must be a year of four digits, e.g. 2026 (got {value!r})")
    return text


def _cover(raw: RawManifest, value: Any, where: Source) -> tuple[bytes | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, str):
        raise where.error("must be the path of a JPEG or PNG image, relative to the manifest")
    try:
        data = raw.folder.read(value, limit=MAX_COVER_BYTES, what="a cover image")
    except PathProblem as exc:
        raise where.error(str(exc)) from exc
    kind = image_type(data)
    if kind is None:
        raise where.error(
            f"{value!r} is not a JPEG or PNG image (or is cut short); give a .jpg or .png file"
        )
    return data, kind


def image_type(data: bytes) -> str | None:
    """ "image/jpeg" or "image/png" for a whole image of either kind with a size; else None."""
    if data.startswith(_PNG):
        # The first chunk is IHDR: length 13, then the width and height.
        if (
            len(data) < 33
            or data[12:16] != b"IHDR"
            or not data.rstrip().endswith(b"IEND\xaeB`\x82")
        ):
            return None
        width, height = struct.unpack(">II", data[16:24])
        return "image/png" if width and height else None
    if data.startswith(_JPEG):
        return (
            "image/jpeg"
            if _jpeg_has_size(data) and data.rstrip(b"\0").endswith(b"\xff\xd9")
            else None
        )
    return None


def _jpeg_has_size(data: bytes) -> bool:
    """Whether the JPEG's segments lead to a frame header with a non-zero size."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF:
            if pos + 9 > len(data):
                return False
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return bool(width and height)
        if marker == 0xDA or length < 2:  # the scan began without a frame header
            return False
        pos += 2 + length
    return False
