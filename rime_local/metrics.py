"""Counters a benchmark reads from `GET /metrics`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EngineMetrics:
    """Engine-wide counts since start or the last reset."""

    requests: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    rejected_429: int = 0
    rejected_401: int = 0
    rejected_400: int = 0
    completed: int = 0
    characters: int = 0
    # Syntheses whose audio began to go out, and their characters: what Rime bills for, cut or
    # not (it generated them). Clients count the same figure from what they received.
    audio_started: int = 0
    billed_characters: int = 0
    audio_seconds: float = 0.0
    request_seconds_total: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    # Valid requests by the voice they asked for, `modelId/speaker`: which voice a client
    # really sent, whatever its own records say.
    voices: Counter[str] = field(default_factory=Counter)

    def asked_for(self, model_id: str, speaker: str) -> None:
        """A request with valid parameters asked for this voice."""
        self.voices[f"{model_id}/{speaker}"] += 1

    def started(self) -> None:
        """A generation began (it holds a slot)."""
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def ended(self) -> None:
        """A generation released its slot."""
        self.in_flight -= 1

    def began_audio(self, characters: int) -> None:
        """The first audio bytes of a synthesis of `characters` characters went out."""
        self.audio_started += 1
        self.billed_characters += characters

    def finished(self, characters: int, audio_seconds: float, seconds: float) -> None:
        """A synthesis delivered all its audio."""
        self.completed += 1
        self.characters += characters
        self.audio_seconds += audio_seconds
        self.request_seconds_total += seconds

    def reset(self) -> None:
        """Zero every count except what is in flight right now."""
        fresh = EngineMetrics(in_flight=self.in_flight, peak_in_flight=self.in_flight)
        self.__dict__.update(fresh.__dict__)

    def snapshot(self) -> dict[str, Any]:
        """The counts as JSON."""
        mean = self.request_seconds_total / self.completed if self.completed else 0.0
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "rejected_429": self.rejected_429,
            "rejected_401": self.rejected_401,
            "rejected_400": self.rejected_400,
            "completed": self.completed,
            "characters": self.characters,
            "audio_started": self.audio_started,
            "billed_characters": self.billed_characters,
            "audio_seconds": round(self.audio_seconds, 3),
            "mean_request_seconds": round(mean, 4),
            "faults": dict(self.faults),
            "faults_total": sum(self.faults.values()),
            "voices": dict(self.voices),
        }
