"""Rich tables for the command line: a plan, the job list, one job's scripts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from pipeline.rime.models import get_model

if TYPE_CHECKING:
    from pipeline.deliver import Attempted
    from pipeline.plan import JobPlan, ScriptPlan
    from pipeline.store.deliveries import DeliveryStatus
    from pipeline.store.views import JobStatus, JobSummary

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


def _when(row: JobStatus) -> str:
    return row.created_at.strftime("%Y-%m-%d %H:%M")


def jobs_table(rows: list[JobStatus]) -> Table:
    """All jobs, newest first."""
    table = Table(title="jobs")
    for name in ("job", "name", "state", "scripts", "chars", "billed", "audio", "created"):
        table.add_column(name, justify="right" if name in {"chars", "billed", "audio"} else "left")
    for row in rows:
        table.add_row(
            row.job_id,
            row.name,
            row.shown_state,
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
    title = f"job {job.job_id} ({job.name}): {job.shown_state}"
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


def deliveries_table(rows: list[DeliveryStatus]) -> Table:
    """A job's webhook deliveries: event, redacted URL, state, attempts, the last answer."""
    table = Table(title="webhooks")
    for name in ("event", "url", "state", "attempts", "last", "when"):
        table.add_column(name, no_wrap=name != "last", overflow="fold")
    for row in rows:
        last = row.last_error or ("" if row.last_status is None else f"HTTP {row.last_status}")
        if row.delivered_at is not None:
            when = f"delivered {row.delivered_at:%H:%M:%S}"
        elif row.next_attempt_at is not None:
            when = f"next {row.next_attempt_at:%H:%M:%S}"
        else:
            when = ""
        table.add_row(row.event, row.url, row.state.value, str(row.attempts), last, when)
    return table


def attempts_table(rows: list[Attempted]) -> Table:
    """Webhook attempts just made: job, event, redacted URL, attempt, outcome."""
    table = Table(title="webhook attempts")
    for name in ("job", "event", "url", "attempt", "state", "answer"):
        table.add_column(name, no_wrap=name != "answer", overflow="fold")
    for row in rows:
        answer = row.error or ("" if row.status is None else f"HTTP {row.status}")
        table.add_row(row.job_id, row.event, row.url, str(row.attempt), row.state.value, answer)
    return table
