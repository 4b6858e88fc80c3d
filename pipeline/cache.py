"""The segment cache of a destination, and pruning it.

Cached segments live under `cache/` at the destination, beside `releases/`, shared by every
production rendering there: a sync of the published prompts leaves both folders out. An entry
is kept while a release that still has its files (or a job not yet finished) uses it, and so is
its word timestamps file (`pipeline.captions.sidecar`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from sqlalchemy import Engine, select

from pipeline.storage import ObjectStore
from pipeline.storage.keys import CACHE_PREFIX, WORDS_SUFFIX
from pipeline.store.schema import JOBS, SEGMENTS

# A cache entry's name ends in its key, a SHA-256 digest (an executor may prefix a namespace).
_DIGEST_CHARS = 64


@dataclass(frozen=True)
class Freed:
    """What a prune deleted and kept."""

    entries: int
    bytes: int | None  # None when the store cannot tell sizes cheaply (S3)
    kept: int


def used_keys(db: Engine, destination: str) -> set[str]:
    """Cache keys that jobs at `destination` with their release files still use."""
    with db.begin() as conn:
        return set(
            conn.execute(
                select(SEGMENTS.c.cache_key)
                .join(JOBS, JOBS.c.id == SEGMENTS.c.job_id)
                .where(JOBS.c.destination == destination, JOBS.c.pruned_at.is_(None))
                .distinct()
            ).scalars()
        )


def prune_cache(db: Engine, store: ObjectStore, destination: str) -> Freed:
    """Delete the destination's cached segments that no kept release uses."""
    used = used_keys(db, destination)
    deleted, size, kept = 0, 0, 0
    local = True
    for key in list(store.list_keys(f"{CACHE_PREFIX}/")):
        # `<digest>.wav` and its word timestamps, `<digest>.words.json`, go together.
        name = PurePosixPath(key).name
        digest = name.split(".")[0][-_DIGEST_CHARS:]
        segment = not name.endswith(WORDS_SUFFIX)  # entries are counted by their audio
        if digest in used:
            kept += segment
            continue
        path = store.local_path(key)
        if path is None:
            local = False
        else:
            size += path.stat().st_size
        store.delete(key)
        deleted += segment
    return Freed(deleted, size if local else None, kept)
