"""Rime's language codes: the three-letter code its voice list files voices under, and its twin.

"Both the 2-letter ISO 639-1 and the 3-letter ISO 639-2/3 form are accepted" (Rime's Coda HTTP
reference, of `lang`); Rime's voices page lists the pairs. The client always sends the
three-letter code, whichever one a manifest wrote, so `en` and `eng` are one voice and one
cache key.
"""

from __future__ import annotations

# The three-letter code of each of Rime's languages, and the two-letter one.
SHORT_CODES: dict[str, str] = {
    "eng": "en",  # English
    "spa": "es",  # Spanish
    "fra": "fr",  # French
    "ger": "de",  # German
    "por": "pt",  # Portuguese
    "jpn": "ja",  # Japanese
    "heb": "he",  # Hebrew
    "hin": "hi",  # Hindi
    "ara": "ar",  # Arabic
}
_CODES = {spelling: code for code, short in SHORT_CODES.items() for spelling in (code, short)}


def canonical_lang(value: str) -> str | None:
    """The three-letter code that `value` spells (`en` or `eng` -> `eng`); None if unknown."""
    return _CODES.get(value)


def spellings(codes: frozenset[str]) -> str:
    """`codes` in both spellings, for messages: "eng/en, spa/es"."""
    return ", ".join(f"{code}/{SHORT_CODES[code]}" for code in sorted(codes))
