"""Rime's models as the engine serves them: sampling rates, speed convention, markup, limits.

Written from Rime's documents (seeds 000-004), the API digest (rime-api.md) and, where those
are silent, Rime's public documentation (docs.rime.ai, as of August 2026), never from the
client's table in `pipeline.rime.models`: the engine stands in for Rime's cloud, so a test of
the client against it can catch a wrong fact on the client's side. Where a seed and a later page
disagree, the seed wins. Where the documents say nothing about a model, the comment says so and
the engine keeps what it did before it had its own table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# "Character limit per request is 500 via the API and 1,000 in the dashboard UI" (seeds 001 and
# 003); the digest gives `text` "at most 500 characters" for every model.
API_MAX_CHARS = 500

# "The value, if provided, must be between 4000 and 44100. Default: 22050" (seed 001 for
# mistv2, seed 002 for mistv3; the digest says the same of the mist models).
_MIST_RATES = range(4000, 44100 + 1)
_MIST_DEFAULT_RATE = 22050

# `timeScaleFactor`: "Accepted range is 0.4 to 2.5; values outside it are clamped without an
# error. A value above 1.0 slows down the audio, a value below 1.0 speeds up the audio." (Rime's
# HTTP references for Coda, Arcana and Mist v3). The engine refuses what Rime would clamp: a
# client sending it has a value Rime silently changes.
TIME_SCALE_RANGE = (0.4, 2.5)


@dataclass(frozen=True)
class ModelFacts:
    """What Rime's documents say one model accepts and how it behaves."""

    id: str
    # An inclusive range (a `range`) or the explicit set of rates Rime's cloud accepts.
    sampling_rates: range | frozenset[int]
    # The rate of the audio when a request has no `samplingRate`.
    default_sampling_rate: int
    # True: speedAlpha below 1.0 speaks faster (Mist v2's convention); False: above 1.0 does.
    speed_lower_is_faster: bool
    # Whether `<ms>` markup becomes silence when `pauseBetweenBrackets` is on.
    honours_pause_markup: bool
    # Whether `Accept: text/event-stream` is served.
    supports_sse: bool
    # Whether `timeScaleFactor` stretches the audio; elsewhere it is accepted and has no effect.
    honours_time_scale: bool = False
    max_chars: int = API_MAX_CHARS
    # The model whose voice list this id serves: itself, unless the id is another's alias.
    voices_of: str = ""

    @property
    def voice_list(self) -> str:
        """The model id under which Rime's voice list files this model's speakers."""
        return self.voices_of or self.id

    def accepts_rate(self, rate: int) -> bool:
        """Whether Rime's cloud takes `samplingRate=rate` for this model."""
        return rate in self.sampling_rates

    def describe_rates(self) -> str:
        """The accepted rates in words, for the 400's message."""
        rates = self.sampling_rates
        if isinstance(rates, range):
            return f"between {rates.start} and {rates.stop - 1}"
        return "one of " + ", ".join(str(r) for r in sorted(rates))


# Seed 003 (the Arcana page): "On-cloud: Accepted values: 8000, 16000, 22050, 24000, 44100,
# 48000, 96000" (the digest agrees). The same entry goes on with Mist's sentence, "must be
# between 4000 and 44100. Default: 22050": its range contradicts the list, which is the one the
# engine enforces, but its default is the only one any document gives for Arcana, and 22050 is
# in the list. Seed 001 names Arcana among the models where higher speedAlpha is faster. Its
# parameter list has no `pauseBetweenBrackets`, so `<ms>` is not honoured. No SSE (seed 000).
# Rime's Playback speed page: "Coda, Arcana, and Mist v3: Use the timeScaleFactor parameter"
# (May 2026; the Arcana HTTP reference of August 2026 still lists it).
_ARCANA = ModelFacts(
    "arcana",
    sampling_rates=frozenset({8000, 16000, 22050, 24000, 44100, 48000, 96000}),
    default_sampling_rate=22050,
    speed_lower_is_faster=False,
    honours_pause_markup=False,
    supports_sse=False,
    honours_time_scale=True,
)

MODELS: dict[str, ModelFacts] = {
    m.id: m
    for m in (
        # The original Mist. The documents name it only beside mistv2 (`noTextNormalization` is
        # "mist/mistv2 only", seed 001) and among "the mist models" (digest): their rates apply.
        # They are silent on its speed convention and pause markup; the engine keeps what it
        # did: lower is faster (seed 001 calls that the legacy convention and names only Coda,
        # Arcana and Mist v3 as inverting it) and pauses honoured. SSE is "Mist v2 only" (seed
        # 000).
        ModelFacts(
            "mist",
            sampling_rates=_MIST_RATES,
            default_sampling_rate=_MIST_DEFAULT_RATE,
            speed_lower_is_faster=True,
            honours_pause_markup=True,
            supports_sse=False,
        ),
        # Seed 001 (the Mist v2 WebSocket page): rates as above; "Lower than 1.0 is faster";
        # `pauseBetweenBrackets` adds the pauses. Seed 000: SSE is for Mist v2 only. For overall
        # speed, "Mist v2: Use the speedAlpha parameter" (the Playback speed page): no
        # `timeScaleFactor`, nor on Mist.
        ModelFacts(
            "mistv2",
            sampling_rates=_MIST_RATES,
            default_sampling_rate=_MIST_DEFAULT_RATE,
            speed_lower_is_faster=True,
            honours_pause_markup=True,
            supports_sse=True,
        ),
        # Seed 002 (the Mist v3 WebSocket page): rates as above; "Higher than 1.0 is faster";
        # `pauseBetweenBrackets` adds the pauses. No SSE (seed 000). `timeScaleFactor` as for
        # Arcana and Coda (the Playback speed page).
        ModelFacts(
            "mistv3",
            sampling_rates=_MIST_RATES,
            default_sampling_rate=_MIST_DEFAULT_RATE,
            speed_lower_is_faster=False,
            honours_pause_markup=True,
            supports_sse=False,
            honours_time_scale=True,
        ),
        _ARCANA,
        # "Three identifiers resolve to Arcana and all three are affected: `arcana`, `arcanav2`,
        # and `arcanav3`" (Rime's Arcana-to-Coda migration guide, August 2026). They serve
        # Arcana's voices and take its parameters; Rime's voice list files them under `arcana`.
        replace(_ARCANA, id="arcanav2", voices_of="arcana"),
        replace(_ARCANA, id="arcanav3", voices_of="arcana"),
        # Coda has no page among the documents. Seed 001 names it among the models where higher
        # speedAlpha is faster, and seed 000 leaves it out of SSE. Its rates, default rate and
        # pause markup are not documented; the engine keeps what it did: Mist's range, 24000 by
        # default, `<ms>` not honoured. `timeScaleFactor` stretches it (the Playback speed page).
        ModelFacts(
            "coda",
            sampling_rates=_MIST_RATES,
            default_sampling_rate=24000,
            speed_lower_is_faster=False,
            honours_pause_markup=False,
            supports_sse=False,
            honours_time_scale=True,
        ),
    )
}
