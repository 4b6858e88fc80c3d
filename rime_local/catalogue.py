"""Which speakers each model offers, and the espeak voice that stands in for each.

Names follow Rime's published voices; the engine's catalogue is a subset. Every speaker speaks
English (`lang=eng`); Rime's rule that `lang` must match the speaker's language is enforced
against that. A speaker's espeak variant and pitch are derived from a CRC of its name, so a voice
sounds the same in every run and on every machine.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from rime_local.voice import EspeakVoice

# Rime language codes the engine knows, and the espeak voice that reads each.
LANGUAGES: dict[str, str] = {"eng": "en-us", "spa": "es", "fra": "fr", "ger": "de"}

_MIST_SPEAKERS = (
    "cove",
    "marsh",
    "bayou",
    "mesa",
    "lagoon",
    "breeze",
    "creek",
    "moraine",
    "abbie",
    "allison",
    "amber",
    "brook",
    "glacier",
    "peak",
    "tundra",
    "wildflower",
)
_ARCANA_SPEAKERS = (
    "luna",
    "celeste",
    "astra",
    "orion",
    "ursa",
    "andromeda",
    "esther",
    "estelle",
    "walnut",
    "atrium",
)
_CODA_SPEAKERS = ("cove", "luna", "astra", "orion")

SPEAKERS: dict[str, tuple[str, ...]] = {
    "mist": _MIST_SPEAKERS,
    "mistv2": _MIST_SPEAKERS,
    "mistv3": _MIST_SPEAKERS,
    "arcana": _ARCANA_SPEAKERS,
    "coda": _CODA_SPEAKERS,
}

# espeak-ng's bundled voice variants; a mix of timbres so speakers sound distinct.
_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7")


@dataclass(frozen=True)
class Speaker:
    """A Rime speaker of one model and how espeak renders it."""

    name: str
    model_id: str
    lang: str
    variant: str
    pitch: int

    def espeak_voice(self) -> EspeakVoice:
        """The espeak voice for this speaker in its language."""
        return EspeakVoice(f"{LANGUAGES[self.lang]}+{self.variant}", self.pitch, 50)


def find_speaker(model_id: str, name: str) -> Speaker | None:
    """The speaker `name` of `model_id`, or None when that model has no such voice."""
    if name not in SPEAKERS.get(model_id, ()):
        return None
    crc = zlib.crc32(name.encode())
    return Speaker(
        name=name,
        model_id=model_id,
        lang="eng",
        variant=_VARIANTS[crc % len(_VARIANTS)],
        pitch=35 + (crc >> 8) % 31,
    )
