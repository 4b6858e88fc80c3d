"""Rime's language codes in both spellings, and the espeak-ng voice that reads each language.

"Both the 2-letter ISO 639-1 and the 3-letter ISO 639-2/3 form are accepted" (Rime's Coda HTTP
reference, of `lang`), and Rime's voices page lists each language as such a pair (`eng` / `en`,
`spa` / `es`, ...). Rime's voice list files every voice under the three-letter code, so that is
the engine's own spelling: a request's `lang` is turned into it before anything else looks at
it. The languages are those of Rime's voice list (see `catalogue`).

The espeak voice is the variety most of Rime's voices of that language speak, by the country
Rime's voice details give them: American English, Latin American Spanish (most are US, Colombian
and Mexican voices), Brazilian Portuguese, Egyptian voices for Arabic (espeak has one Arabic).
It is named by its file under espeak-ng's `lang/` folder, which spares espeak a scan of every
voice file each time the library is loaded afresh (see `voice`); the audio is the same.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    """One of Rime's languages: its two codes and espeak-ng's voice for it."""

    code: str  # ISO 639-2/3, as Rime's voice list writes it
    short: str  # ISO 639-1
    espeak: str  # espeak-ng's voice file for it, under `lang/`


LANGUAGES: dict[str, Language] = {
    language.code: language
    for language in (
        Language("eng", "en", "gmw/en-US"),
        Language("spa", "es", "roa/es-419"),
        Language("fra", "fr", "roa/fr"),
        Language("ger", "de", "gmw/de"),
        Language("por", "pt", "roa/pt-BR"),
        Language("jpn", "ja", "jpx/ja"),
        Language("heb", "he", "sem/he"),
        Language("hin", "hi", "inc/hi"),
        Language("ara", "ar", "sem/ar"),
    )
}
_BY_SPELLING = {
    spelling: lang for lang in LANGUAGES.values() for spelling in (lang.code, lang.short)
}


def find_language(spelling: str) -> Language | None:
    """The language a `lang` value names, in either of Rime's spellings; None if unknown."""
    return _BY_SPELLING.get(spelling)


def known_spellings() -> str:
    """Every accepted `lang`, for the 400's message: "eng/en, spa/es, ..."."""
    return ", ".join(f"{lang.code}/{lang.short}" for lang in LANGUAGES.values())
