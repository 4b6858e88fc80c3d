"""How a job was asked for beyond its manifest: `JobOptions`, recorded on the job's row.

Its own module because every view of a job reads it, and a `status` should not import the
planner to do so.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pipeline.storage.keys import DEFAULT_KEEP_RELEASES


class Publish(StrEnum):
    """When a finished job's release becomes the published set."""

    AUTO = "auto"  # as soon as every script of the job is done
    MANUAL = "manual"  # by `rime-batch publish NAME RELEASE`


@dataclass(frozen=True)
class JobOptions:
    """How a job was asked for beyond its manifest; recorded on the job, kept by a resume."""

    # `--set key=value` and `--voice-map old=new`, as given (already applied to the scripts).
    set: tuple[tuple[str, str], ...] = ()
    voice_map: tuple[tuple[str, str], ...] = ()
    no_cache: bool = False  # synthesize every segment again, whatever the cache holds
    publish: Publish = Publish.AUTO
    notify: tuple[str, ...] = ()  # webhook URLs told of the job's end
    schedule: str | None = None  # the schedule that submitted it
    keep_releases: int = DEFAULT_KEEP_RELEASES  # releases kept once this one is published

    def to_json(self) -> dict[str, object]:
        """The options as the job table stores them."""
        return {
            "set": [list(pair) for pair in self.set],
            "voice_map": [list(pair) for pair in self.voice_map],
            "no_cache": self.no_cache,
            "publish": self.publish.value,
            "notify": list(self.notify),
            "schedule": self.schedule,
            "keep_releases": self.keep_releases,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> JobOptions:
        """The options of a stored job (None: a job recorded before options existed)."""
        if not data:
            return cls()
        return cls(
            set=tuple((str(k), str(v)) for k, v in data.get("set", ())),
            voice_map=tuple((str(k), str(v)) for k, v in data.get("voice_map", ())),
            no_cache=bool(data.get("no_cache", False)),
            publish=Publish(data.get("publish", Publish.AUTO.value)),
            notify=tuple(data.get("notify", ())),
            schedule=data.get("schedule"),
            keep_releases=int(data.get("keep_releases", DEFAULT_KEEP_RELEASES)),
        )
