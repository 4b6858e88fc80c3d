"""The rendering plan: what every stage after the manifest works from.

A `JobPlan` is pure data: per script, the synthesis parameters, the output settings and the
segments with their pauses and cache keys. It is built from a manifest by `build_plan`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SynthParams:
    """Every synthesis parameter that changes the audio (the cache key covers all of them)."""

    speaker: str
    model_id: str
    lang: str
    sampling_rate: int
    speed_alpha: float | None  # already in the model's own convention
    pause_between_brackets: bool
    phonemize_between_brackets: bool
    no_text_normalization: bool
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None


@dataclass(frozen=True)
class OutputSpec:
    """How a script's stitched audio is finished and encoded."""

    formats: tuple[str, ...]  # wav | wav-mulaw | mulaw | mp3 | ogg
    loudness_lufs: float | None = None
    true_peak_db: float = -1.0
    mp3_bitrate: str = "128k"


@dataclass(frozen=True)
class PlannedSegment:
    """One request to Rime and the silence that follows it in the stitched output."""

    index: int
    source: str  # exact slice of the script; joining every source gives the script back
    text: str  # the request text (boundary pause markers removed)
    pause_after_ms: int  # silence inserted after this segment at stitch time
    inline_speed_alpha: tuple[float, ...]
    cache_key: str

    @property
    def chars(self) -> int:
        """Characters billed for one request of this segment."""
        return len(self.text)


@dataclass(frozen=True)
class ScriptPlan:
    """One script: its parameters, output settings and segments."""

    script_id: str
    params: SynthParams
    output: OutputSpec
    segments: tuple[PlannedSegment, ...]
    lead_pause_ms: int = 0  # a pause marker at the very start of the script

    @property
    def chars(self) -> int:
        """Characters billed when every segment is synthesized once."""
        return sum(s.chars for s in self.segments)


@dataclass(frozen=True)
class JobPlan:
    """A whole job: where it came from, where it goes, and its scripts."""

    name: str
    manifest: str
    destination: str  # a local folder or s3://bucket/prefix
    scripts: tuple[ScriptPlan, ...]

    @property
    def chars(self) -> int:
        """Characters billed when every segment is synthesized once."""
        return sum(s.chars for s in self.scripts)
