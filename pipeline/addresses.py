"""URLs and e-mail addresses in prose: the one rule of what counts as one.

A run of text without whitespace is an address when it holds `://`, starts a host with `www.`
or holds an `@`. The segmenter never cuts inside one; the lexicon never rewrites one.
"""

from __future__ import annotations

import re

_MARK = re.compile(r"://|www\.|@", re.IGNORECASE)


def is_address(text: str, start: int = 0, end: int | None = None) -> bool:
    """Whether text[start:end], a run without whitespace, is a URL or an e-mail address."""
    return _MARK.search(text, start, len(text) if end is None else end) is not None
