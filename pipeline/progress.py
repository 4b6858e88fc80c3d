"""Progress of a render: a progress bar on a terminal, plain log lines anywhere else."""

from __future__ import annotations

import logging
import time
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


class ProgressReporter:
    """Turns stage events into a progress bar (terminal) or log lines (anything else)."""

    def __init__(self, console: Console, *, segments: int, chars: int) -> None:
        self.console = console
        self.retries = 0
        self.chars_done = 0
        self.chars_total = chars
        # A bad key or a bad parameter fails many segments with the same message: say it once.
        self._errors_told: set[str] = set()
        self._started = time.monotonic()
        self._live = console.is_terminal
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if self._live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[chars]} chars"),
                TextColumn("retries {task.fields[retries]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._progress.add_task("segments", total=segments, chars="0", retries=0)

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

    def __call__(self, event: Event) -> None:
        """Take one stage event."""
        if event.kind == "attempt":
            self.retries += 1
            log.warning("retrying %s: %s", event.script_id, event.error)
        elif event.kind == "segment":
            if event.outcome != Outcome.FAILED:
                self.chars_done += event.chars
            elif (event.error or "") not in self._errors_told:
                self._errors_told.add(event.error or "")
                log.error("segment of %s failed: %s", event.script_id, event.error)
            if self._progress is not None and self._task is not None:
                self._progress.update(
                    self._task,
                    advance=1,
                    chars=f"{self.chars_done:,}/{self.chars_total:,}",
                    retries=self.retries,
                )
            else:
                log.info(
                    "segment %s %s (%d/%d chars)",
                    event.script_id,
                    event.outcome,
                    self.chars_done,
                    self.chars_total,
                )
        elif event.kind == "script":
            if event.outcome == Outcome.FAILED:
                log.error("script %s failed: %s", event.script_id, event.error)
            else:
                log.info("script %s done: %.1fs of audio", event.script_id, event.seconds)
