"""Which speakers each model offers, in which languages, and the espeak voice for each.

The voices are Rime's public voice list, every voice of every model: names by model and language
from https://users.rime.ai/data/voices/all-v2.json, each voice's gender from
https://users.rime.ai/data/voices/voice_details.json, both as retrieved on 2026-08-04 (the copy
Rime's documentation pages of August 2026 are generated from). `voices.json` beside this module
holds them as model, language, gender, names; to refresh it, regroup those two files the same
way. Model ids that are another's alias (`models.ModelFacts.voices_of`) serve that model's list.

A voice serves the languages it is filed under (a few Mist and Arcana voices are filed under
two); "If provided, the language must match the language spoken by the provided speaker" (seeds
001-003) is enforced against them. A speaker's espeak variant and pitch come from a CRC of its
name, the variant among espeak-ng's female ones for a female voice and its male ones for a male
voice (any of them for a non-binary voice or one the details give no gender), so a voice sounds
the same in every run, on every machine and on every model that has it.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources

from rime_local.languages import LANGUAGES
from rime_local.models import MODELS
from rime_local.voice import FEMALE_VARIANTS, MALE_VARIANTS, EspeakVoice


class Gender(StrEnum):
    """A voice's gender as Rime's voice details give it."""

    FEMALE = "female"
    MALE = "male"
    NONBINARY = "nonbinary"
    UNSPECIFIED = "unspecified"  # the details leave it empty


VARIANTS: dict[Gender, tuple[str, ...]] = {
    Gender.FEMALE: FEMALE_VARIANTS,
    Gender.MALE: MALE_VARIANTS,
    Gender.NONBINARY: FEMALE_VARIANTS + MALE_VARIANTS,
    Gender.UNSPECIFIED: FEMALE_VARIANTS + MALE_VARIANTS,
}
# espeak's pitch (0-100, 50 its default), kept near the middle: the variant carries the gender.
_PITCH_LOW, _PITCH_SPAN = 40, 21


@dataclass(frozen=True)
class Speaker:
    """A Rime speaker of one model, the languages it speaks, and how espeak renders it."""

    name: str
    model_id: str
    languages: tuple[str, ...]  # Rime's three-letter codes, as the voice list files it
    gender: Gender

    def speaks(self, lang: str) -> bool:
        """Whether this voice serves `lang` (a three-letter code)."""
        return lang in self.languages

    @property
    def default_lang(self) -> str:
        """The language without a `lang`: Rime's default, `eng`, if the voice speaks it."""
        return "eng" if self.speaks("eng") else self.languages[0]

    @property
    def variant(self) -> str:
        """espeak's voice variant: fixed by the name, among those of the voice's gender."""
        pool = VARIANTS[self.gender]
        return pool[_crc(self.name) % len(pool)]

    @property
    def pitch(self) -> int:
        """espeak's pitch for this voice, fixed by the name."""
        return _PITCH_LOW + (_crc(self.name) >> 8) % _PITCH_SPAN

    def espeak_voice(self, lang: str) -> EspeakVoice:
        """The espeak voice for this speaker speaking `lang`."""
        return EspeakVoice(f"{LANGUAGES[lang].espeak}+{self.variant}", self.pitch, 50)


def _crc(name: str) -> int:
    return zlib.crc32(name.encode())


VoiceList = dict[str, dict[str, dict[str, list[str]]]]


def load_voice_list() -> VoiceList:
    """Rime's voice list as stored beside this module: model, language, gender, names."""
    text = resources.files("rime_local").joinpath("voices.json").read_text(encoding="utf-8")
    voices: VoiceList = json.loads(text)
    return voices


def build_catalogue(voices: VoiceList) -> dict[str, dict[str, Speaker]]:
    """Every model's speakers by name; ValueError for a voice list the engine can't serve."""
    catalogue: dict[str, dict[str, Speaker]] = {}
    for model in MODELS.values():
        languages: dict[str, list[str]] = {}
        genders: dict[str, Gender] = {}
        for lang, by_gender in voices[model.voice_list].items():
            if lang not in LANGUAGES:
                raise ValueError(f"{model.voice_list} files voices under an unknown lang {lang!r}")
            for gender, names in by_gender.items():
                for name in names:
                    if genders.setdefault(name, Gender(gender)) != Gender(gender):
                        raise ValueError(f"{name!r} of {model.voice_list} has two genders")
                    languages.setdefault(name, []).append(lang)
        catalogue[model.id] = {
            name: Speaker(name, model.id, tuple(languages[name]), genders[name])
            for name in sorted(languages)
        }
    return catalogue


CATALOGUE = build_catalogue(load_voice_list())

# Every model's speaker names, alphabetical.
SPEAKERS: dict[str, tuple[str, ...]] = {m: tuple(s) for m, s in CATALOGUE.items()}


def find_speaker(model_id: str, name: str) -> Speaker | None:
    """The speaker `name` of `model_id`, or None when that model has no such voice."""
    return CATALOGUE.get(model_id, {}).get(name)
