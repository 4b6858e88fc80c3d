"""Object keys: validation, joining, where cached segments and outputs live, and clashes."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import TypeVar

from pipeline.storage.base import InvalidKey, ObjectStore

CACHE_PREFIX = "cache"
# Every job's outputs, each job under its own id (its release): `releases/<job id>/...`.
RELEASES_PREFIX = "releases"
# The published set's index at the destination's root (and each release's own, in its folder).
RESULTS_KEY = "results.json"
# Releases a production keeps when a new one is published, unless its manifest says (the
# published one is never pruned).
DEFAULT_KEEP_RELEASES = 3
# What a script id must not start with: the destination's own folders and files.
RESERVED_NAMES = frozenset({CACHE_PREFIX, RELEASES_PREFIX, RESULTS_KEY})
# A cached segment's word timestamps, beside its `.wav` (see `words_path`).
WORDS_SUFFIX = ".words.json"
# Cache keys are digests; anything else (a slash, a dot) could address outside the cache.
_CACHE_KEY = re.compile(r"[A-Za-z0-9_-]{2,}")

# Output format name -> file extension; the names are OutputSpec.formats values.
OUTPUT_EXTENSIONS: Mapping[str, str] = {
    "wav": ".wav",
    "wav-mulaw": ".mulaw.wav",
    "mulaw": ".ulaw",
    "mp3": ".mp3",
    "ogg": ".ogg",
    # Captions (OutputSpec.captions), published, pruned and rolled back with the audio.
    "srt": ".srt",
    "vtt": ".vtt",
}

Owner = TypeVar("Owner")


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


def words_path(cache_path: str) -> str:
    """The key of a cached segment's word timestamps, beside its audio: `<key>.words.json`."""
    return cache_path.removesuffix(".wav") + WORDS_SUFFIX


def is_cached(store: ObjectStore, cache_path: str, *, words: bool = False) -> bool:
    """Whether a segment's audio is cached (and, with `words`, its word timestamps beside it),
    as a plan, a diff or a preflight counts it; the stage checks the words match the audio."""
    return store.exists(cache_path) and (not words or store.exists(words_path(cache_path)))


def namespaced_cache_path(namespace: str, cache_key: str) -> str:
    """The cache path of a segment's audio from one synthesizer (`namespace`, "" for Rime)."""
    return cache_key_path(f"{namespace}-{cache_key}" if namespace else cache_key)


def release_key(job_id: str, key: str = "") -> str:
    """Where `key` of a job's release lives (the release's folder itself when `key` is empty)."""
    return f"{RELEASES_PREFIX}/{job_id}/{key}" if key else f"{RELEASES_PREFIX}/{job_id}/"


def output_key(script_id: str, fmt: str) -> str:
    """The key of a script's output in one format: `<id><extension>`."""
    return script_id + OUTPUT_EXTENSIONS[fmt]


def first_clash(keys: Iterable[tuple[Owner, str]]) -> tuple[Owner, Owner, str, str] | None:
    """The first key that cannot live beside an earlier one: (earlier, later, their keys).

    Two keys clash when they differ only in letter case (one file on case-insensitive file
    systems) or when one is a folder of the other (`a.wav` and `a.wav/b.wav`).
    """
    files: dict[str, tuple[Owner, str]] = {}
    folders: dict[str, tuple[Owner, str]] = {}
    for owner, key in keys:
        folded = key.casefold()
        parts = folded.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts))]
        earlier = files.get(folded) or folders.get(folded)
        earlier = earlier or next((files[p] for p in prefixes if p in files), None)
        if earlier is not None:
            return earlier[0], owner, earlier[1], key
        files[folded] = (owner, key)
        for prefix in prefixes:
            folders.setdefault(prefix, (owner, key))
    return None


# A book's files (`pipeline.book`) live in one folder of the release, `book/` unless its
# manifest names another; their names come from the titles, as slugs.
DEFAULT_BOOK_FOLDER = "book"
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_SLUG_CHARS = 60


def slug(text: str, fallback: str) -> str:
    """`text` as a file name: lower-case ASCII letters and digits joined by '-' (accents
    dropped), at most 60 characters; `fallback` when nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    cut = _NOT_SLUG.sub("-", ascii_text.lower()).strip("-")[:_SLUG_CHARS].strip("-")
    return cut or fallback


def book_keys(folder: str, title: str, chapter_titles: Iterable[str]) -> tuple[str, str, list[str]]:
    """A book's keys in its release: the M4B, the playlist, and one MP3 per chapter in order
    (numbered, so equal titles never share a file)."""
    name = slug(title, "book")
    titles = list(chapter_titles)
    width = max(2, len(str(len(titles))))
    mp3s = [
        f"{folder}/{n:0{width}d}-{slug(t, 'chapter')}.mp3" for n, t in enumerate(titles, start=1)
    ]
    return f"{folder}/{name}.m4b", f"{folder}/{name}.m3u", mp3s
