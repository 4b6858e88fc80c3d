"""Object keys: validation, joining, and where cached segments live."""

from __future__ import annotations

import re

from pipeline.storage.base import InvalidKey

CACHE_PREFIX = "cache"
# Cache keys are digests; anything else (a slash, a dot) could address outside the cache.
_CACHE_KEY = re.compile(r"[A-Za-z0-9_-]{2,}")


def validate_key(key: str) -> str:
    """Return `key` if it is a relative '/'-separated key that stays under the root."""
    if not key:
        raise InvalidKey("an object key must not be empty")
    if key.startswith("/"):
        raise InvalidKey(f"object key {key!r} is absolute; keys are relative to the destination")
    if "\\" in key or "\x00" in key:
        raise InvalidKey(f"object key {key!r} contains a backslash or NUL; use '/' separators")
    for part in key.split("/"):
        if part in {"", ".", ".."}:
            raise InvalidKey(
                f"object key {key!r} has an empty, '.' or '..' part; keys must stay "
                "under the destination"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """Return `prefix` (maybe empty, maybe ending in '/') if every full part is a valid key."""
    if prefix:
        validate_key(prefix.rstrip("/") or "/")
    return prefix


def join_key(prefix: str, key: str) -> str:
    """`prefix/key`, or `key` when there is no prefix."""
    return f"{prefix}/{key}" if prefix else key


def cache_key_path(cache_key: str) -> str:
    """The store key of a cached segment: `cache/<first two chars>/<cache key>.wav`."""
    if not _CACHE_KEY.fullmatch(cache_key):
        raise InvalidKey(
            f"cache key {cache_key!r} must be at least two letters, digits, '-' or '_'"
        )
    return f"{CACHE_PREFIX}/{cache_key[:2]}/{cache_key}.wav"
