"""Local files written so a reader never sees half of one: temp names, atomic replacement,
durable renames, and streaming checksums. Every writer of the project names its temp files here,
so a listing can always tell them apart."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"
# Opens of a temp file whose folder may be created, then removed by a concurrent delete.
_CREATE_TRIES = 3


def temp_path_for(target: Path) -> Path:
    """A unique hidden sibling of `target` to write into before the rename."""
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of our in-progress temp files."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def create_temp(temp: Path) -> int:
    """Open a new temp file for writing, creating its folder if needed; the descriptor."""
    # os.open with 0o666 lets the umask decide the final mode, as a plain open() would;
    # mkstemp would leave every output readable only by its owner.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for _ in range(_CREATE_TRIES - 1):
        try:
            return os.open(temp, flags, 0o666)
        except FileNotFoundError:
            # Only now: a mkdir of a folder that exists costs as much as the write itself. A
            # store's delete removes folders it empties, so one may vanish again in between.
            temp.parent.mkdir(parents=True, exist_ok=True)
    return os.open(temp, flags, 0o666)


def atomic_write(target: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write` on a temp file next to `target`, then rename it over `target`."""
    temp = temp_path_for(target)
    fd = create_temp(temp)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            # The rename must not reach the disk before the data it points to.
            os.fsync(fh.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_path(target.parent)
    return target


def fsync_path(path: Path) -> None:
    """Flush a file (its bytes) or a folder (the renames into it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so memory stays flat for any size."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
