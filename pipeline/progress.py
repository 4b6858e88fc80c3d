"""Progress of a render: bars on a terminal, plain log lines anywhere else.

Two phases, each with its own count: synthesizing (segments) and stitching (scripts: trim,
pauses, loudness, encode, and the upload to a remote destination). Scripts are stitched while
others still synthesize, so both bars move together; the stitching bar's clock starts with the
first stitch, so it keeps counting after the last segment has arrived.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pipeline.stages import Event, Outcome

log = logging.getLogger("rime_batch")

SYNTHESIZING = "synthesizing"
STITCHING = "stitching"


def segment_name(event: Event) -> str:
    """The script and, for a segment's event, its index in the script: `ivr/welcome#2`."""
    return event.script_id if event.segment is None else f"{event.script_id}#{event.segment}"


def retry_line(event: Event) -> str:
    """One failed attempt that will be retried: which segment, which attempt, what went wrong."""
    return (
        f"retrying segment {segment_name(event)} "
        f"(attempt {event.attempt}/{event.max_attempts} failed): {event.error}"
    )


@dataclass(frozen=True)
class Done:
    """Work of a job finished before this run: segments, their characters, scripts."""

    segments: int = 0
    chars: int = 0
    scripts: int = 0


class ProgressReporter:
    """Turns stage events into progress bars (terminal) or log lines (anything else)."""

    def __init__(
        self,
        console: Console,
        *,
        segments: int,
        chars: int,
        scripts: int = 0,
        done: Done | None = None,
    ) -> None:
        """`done`: what an earlier run of the job finished (a resume starts from there)."""
        done = done or Done()
        self.console = console
        self.retries = 0
        self.chars_done = done.chars
        self.chars_total = chars
        self.segments_done = done.segments
        self.segments_total = segments
        self.stitches_started = done.scripts
        self.scripts_done = done.scripts
        self.scripts_total = scripts
        # A bad key or a bad parameter fails many segments with the same message: say it once.
        self._errors_told: set[str] = set()
        self._progress: Progress | None = None
        self._synth: TaskID | None = None
        self._stitch: TaskID | None = None
        if console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description:<12}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self._synth = self._progress.add_task(
                SYNTHESIZING,
                total=segments,
                completed=done.segments,
                detail=self._synth_detail(),
            )
            # Its clock starts with the first stitch.
            self._stitch = self._progress.add_task(
                STITCHING,
                total=scripts,
                completed=done.scripts,
                detail=self._stitch_detail(),
                start=False,
            )

    def __enter__(self) -> ProgressReporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _stitch_detail(self) -> str:
        return f"scripts, {self.stitches_started - self.scripts_done} in progress"

    def _synth_detail(self) -> str:
        return f"{self.chars_done:,}/{self.chars_total:,} chars, retries {self.retries}"

    def __call__(self, event: Event) -> None:
        """Take one stage event."""
        if event.kind == "attempt":
            self.retries += 1
            log.warning("%s", retry_line(event))
            self._update(self._synth, detail=self._synth_detail())
        elif event.kind == "segment":
            self._segment(event)
        elif event.kind == "stitch":
            self.stitches_started += 1
            if self._progress is not None and self._stitch is not None:
                self._progress.start_task(self._stitch)
                self._update(self._stitch, detail=self._stitch_detail())
            else:
                log.info(
                    "stitching %s (%d/%d scripts)",
                    event.script_id,
                    self.stitches_started,
                    self.scripts_total,
                )
        elif event.kind == "book":
            if event.outcome == Outcome.FAILED:
                log.error("book %r failed: %s", event.script_id, event.error)
            else:
                log.info("book %r %s", event.script_id, event.outcome)
        elif event.kind == "script":
            self.scripts_done += 1
            self._update(self._stitch, advance=1, detail=self._stitch_detail())
            if event.outcome == Outcome.FAILED:
                log.error("script %s failed: %s", event.script_id, event.error)
            else:
                log.info(
                    "script %s done: %.1fs of audio (%d/%d scripts)",
                    event.script_id,
                    event.seconds,
                    self.scripts_done,
                    self.scripts_total,
                )

    def _segment(self, event: Event) -> None:
        self.segments_done += 1
        if event.outcome not in (Outcome.FAILED, Outcome.SKIPPED):
            self.chars_done += event.chars
        elif (event.error or "") not in self._errors_told:
            self._errors_told.add(event.error or "")
            log.error("segment %s failed: %s", segment_name(event), event.error)
        if self._progress is not None:
            self._update(self._synth, advance=1, detail=self._synth_detail())
        else:
            log.info(
                "segment %s %s (%d/%d segments, %d/%d chars)",
                segment_name(event),
                event.outcome,
                self.segments_done,
                self.segments_total,
                self.chars_done,
                self.chars_total,
            )

    def _update(self, task: TaskID | None, advance: int = 0, detail: str | None = None) -> None:
        if self._progress is None or task is None:
            return
        if detail is None:
            self._progress.update(task, advance=advance)
        else:
            self._progress.update(task, advance=advance, detail=detail)
