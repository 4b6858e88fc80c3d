"""A cached segment's word timestamps: a JSON file beside its audio in the segment cache.

The cache key is the same whichever API spoke the audio, so audio-only renders keep finding
their entries. The word file names the SHA-256 of the audio entry it was made with: timestamps
are used only with that audio, and an entry whose audio was replaced (an HTTP render with
`--no-cache`, a damaged file made again) counts as having none, so captions synthesize it again.
"""

from __future__ import annotations

import hashlib
import json

from pipeline.rime.events import WordTimestamp

VERSION = 1


def encode(audio_entry: bytes, words: tuple[WordTimestamp, ...]) -> bytes:
    """The word file for `words`, spoken in the cached audio entry `audio_entry`."""
    return json.dumps(
        {
            "version": VERSION,
            "audio_sha256": hashlib.sha256(audio_entry).hexdigest(),
            "words": [[w.word, w.start, w.end] for w in words],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def decode(data: bytes, audio_entry: bytes) -> tuple[WordTimestamp, ...] | None:
    """The words of a word file made with `audio_entry`; None if it was made with other audio
    or cannot be read."""
    try:
        document = json.loads(data)
        if (
            document.get("version") != VERSION
            or document.get("audio_sha256") != hashlib.sha256(audio_entry).hexdigest()
        ):
            return None
        return tuple(
            WordTimestamp(str(word), float(start), float(end))
            for word, start, end in document["words"]
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
