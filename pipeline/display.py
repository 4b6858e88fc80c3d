"""Rich tables and progress for the command line; plain log lines when not on a terminal."""

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
from rich.table import Table

from pipeline.plan import JobPlan, ScriptPlan
from pipeline.rime.models import get_model
from pipeline.stages import Event, Outcome
from pipeline.store.queries import JobRow, JobSummary

log = logging.getLogger("rime_batch")

# Rime voices speak roughly 15 characters a second at speed 1.0.
CHARS_PER_SECOND = 15.0


def estimated_seconds(script: ScriptPlan) -> float:
    """A rough length of the finished audio: speech at a typical rate plus every pause."""
    alpha = script.params.speed_alpha or 1.0
    speed = 1.0 / alpha if get_model(script.params.model_id).speed_lower_is_faster else alpha
    pauses = script.lead_pause_ms + sum(s.pause_after_ms for s in script.segments)
    return script.chars / CHARS_PER_SECOND / speed + pauses / 1000.0


def plan_table(plan: JobPlan) -> Table:
    """One row per script: segments, characters, estimated minutes; totals in the footer."""
    table = Table(title=f"{plan.name} -> {plan.destination}", show_footer=True)
    seconds = [estimated_seconds(s) for s in plan.scripts]
    table.add_column("script", footer="total", no_wrap=True)
    table.add_column("voice")
    table.add_column(
        "segments", justify="right", footer=str(sum(len(s.segments) for s in plan.scripts))
    )
    table.add_column("chars", justify="right", footer=f"{plan.chars:,}")
    table.add_column("est. min", justify="right", footer=f"{sum(seconds) / 60:.1f}")
    table.add_column("formats")
    for script, secs in zip(plan.scripts, seconds, strict=True):
        p = script.params
        table.add_row(
            script.script_id,
            f"{p.speaker} / {p.model_id} @ {p.sampling_rate}",
            str(len(script.segments)),
            f"{script.chars:,}",
            f"{secs / 60:.1f}",
            ", ".join(script.output.formats),
        )
    return table


def _when(row: JobRow) -> str:
    return row.created_at.strftime("%Y-%m-%d %H:%M")


def jobs_table(rows: list[JobRow]) -> Table:
    """All jobs, newest first."""
    table = Table(title="jobs")
    for name in ("job", "name", "state", "scripts", "chars", "billed", "audio", "created"):
        table.add_column(name, justify="right" if name in {"chars", "billed", "audio"} else "left")
    for row in rows:
        table.add_row(
            row.job_id,
            row.name,
            row.state.value,
            f"{row.scripts_done}/{row.scripts}",
            f"{row.chars:,}",
            f"{row.billed_chars:,}",
            f"{row.audio_seconds:.1f}s",
            _when(row),
        )
    return table


def summary_table(summary: JobSummary) -> Table:
    """One job's scripts with state, attempts, characters, durations and errors."""
    job = summary.job
    title = f"job {job.job_id} ({job.name}): {job.state.value}"
    table = Table(title=title, caption=job.error or None)
    columns = ("script", "state", "segments", "attempts", "chars", "billed", "audio", "error")
    for name in columns:
        table.add_column(name, no_wrap=name != "error", overflow="fold")
    for s in summary.scripts:
        table.add_row(
            s.script_id,
            s.state.value,
            f"{s.segments_done}/{s.segments}",
            str(s.attempts),
            f"{s.chars:,}",
            f"{s.billed_chars:,}",
            "" if s.audio_seconds is None else f"{s.audio_seconds:.2f}s",
            s.error or "",
        )
    return table


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
