"""What we know about each Rime model: limits, sampling rates, speed convention.

One home for facts that the manifest validator, the segmenter and the client need. The local
engine (`rime_local`) keeps its own, so tests against it can catch a wrong fact here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.rime.languages import canonical_lang

# Rime's per-request text limit through the API (the dashboard allows 1,000).
DEFAULT_MAX_CHARS = 500

# The languages each model's voices speak, by Rime's three-letter codes (`languages` knows the
# two-letter ones). A voice speaks one of them (Rime: "If provided, the language must match the
# language spoken by the provided speaker"); a code outside its model's set is refused before any
# request. From Rime's documentation as of August 2026:
# Mist v2 and Mist v3: "Mist v2 supports English, French, German, and Spanish", and the language
# matrix gives Mist v3 the same four (the voices page).
_MIST_LANGUAGES = frozenset({"eng", "spa", "fra", "ger"})
# Mist: Rime's voice list (all-v2.json) files every Mist voice under English.
_MIST_V1_LANGUAGES = frozenset({"eng"})
# Coda: the language matrix, "English, Arabic, French, German, Hindi, Japanese, Portuguese, and
# Spanish" (the voices page and the Coda HTTP reference's `lang` table).
_CODA_LANGUAGES = frozenset({"eng", "ara", "fra", "ger", "hin", "jpn", "por", "spa"})
# Arcana: the eight languages the sunset notice moves to Coda ("English, Spanish, French,
# German, Japanese, Portuguese, Arabic, Hindi"), and Hebrew, "Arcana only" (the voices page of May
# 2026).
_ARCANA_LANGUAGES = _CODA_LANGUAGES | {"heb"}


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about one Rime model."""

    id: str
    # Either an inclusive range (lo, hi) or an explicit set of accepted rates.
    rate_range: tuple[int, int] | None
    rate_set: frozenset[int] | None
    default_sampling_rate: int
    # Mist v2 (and mist) use "lower speedAlpha is faster"; newer models invert it.
    speed_lower_is_faster: bool
    # `<ms>` pause markup is honoured on Mist models only.
    honours_pause_markup: bool
    supports_sse: bool
    # The three-letter codes of the languages its voices speak.
    languages: frozenset[str]
    max_chars: int = DEFAULT_MAX_CHARS
    # `{phonemes}` markup, read with phonemizeBetweenBrackets: "Custom pronunciation is
    # supported on Mist v1 and v2 only" (Rime's phonetic alphabet page).
    honours_phoneme_markup: bool = False

    def accepts_rate(self, rate: int) -> bool:
        """Whether `samplingRate=rate` is valid for this model on Rime's cloud."""
        if self.rate_set is not None:
            return rate in self.rate_set
        assert self.rate_range is not None
        lo, hi = self.rate_range
        return lo <= rate <= hi

    def describe_rates(self) -> str:
        """Human text for the accepted sampling rates, for error messages."""
        if self.rate_set is not None:
            return "one of " + ", ".join(str(r) for r in sorted(self.rate_set))
        assert self.rate_range is not None
        return f"between {self.rate_range[0]} and {self.rate_range[1]}"

    def language(self, lang: str) -> str | None:
        """`lang` in either spelling as the three-letter code, if this model's voices speak it."""
        code = canonical_lang(lang)
        return code if code in self.languages else None

    def speed_alpha(self, speed: float) -> float:
        """Map a user speed (higher is faster, 1.0 normal) to this model's `speedAlpha`."""
        return round(1.0 / speed, 4) if self.speed_lower_is_faster else speed


_MIST_RATES = (4000, 44100)
_ARCANA_RATES = frozenset({8000, 16000, 22050, 24000, 44100, 48000, 96000})

MODELS: dict[str, ModelInfo] = {
    m.id: m
    for m in (
        ModelInfo(
            "mist",
            _MIST_RATES,
            None,
            22050,
            True,
            True,
            False,
            _MIST_V1_LANGUAGES,
            honours_phoneme_markup=True,
        ),
        ModelInfo(
            "mistv2",
            _MIST_RATES,
            None,
            22050,
            True,
            True,
            True,
            _MIST_LANGUAGES,
            honours_phoneme_markup=True,
        ),
        ModelInfo("mistv3", _MIST_RATES, None, 22050, False, True, False, _MIST_LANGUAGES),
        # Rime's Arcana page gives 22050 as the samplingRate default.
        ModelInfo("arcana", None, _ARCANA_RATES, 22050, False, False, False, _ARCANA_LANGUAGES),
        ModelInfo("coda", _MIST_RATES, None, 24000, False, False, False, _CODA_LANGUAGES),
    )
}


def get_model(model_id: str) -> ModelInfo:
    """The model's facts; unknown ids raise KeyError with the known ones listed."""
    try:
        return MODELS[model_id]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise KeyError(f"unknown modelId {model_id!r} (known: {known})") from None
