"""Rich tables for the command line: a plan, the job list, one job's scripts, releases,
schedules."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from pipeline.loudness import Loudness
from pipeline.results import seconds
from pipeline.rime.models import get_model

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime
    from pathlib import Path

    from pipeline.acx import Finding
    from pipeline.deliver import Attempted
    from pipeline.diff import PlanDiff
    from pipeline.loudness import FileFigures, LoudnessRecord
    from pipeline.options import JobOptions
    from pipeline.plan import JobPlan, ScriptPlan
    from pipeline.store.deliveries import DeliveryStatus
    from pipeline.store.productions import Production, Release
    from pipeline.store.schedules import Run, Schedule
    from pipeline.store.schema import OutputFile
    from pipeline.store.views import JobStatus, JobSummary

# Rime voices speak roughly 15 characters a second at speed 1.0.
CHARS_PER_SECOND = 15.0


def estimated_seconds(script: ScriptPlan) -> float:
    """A rough length of the finished audio: speech at a typical rate plus every pause."""
    alpha = script.params.speed_alpha or 1.0
    speed = 1.0 / alpha if get_model(script.params.model_id).speed_lower_is_faster else alpha
    pauses = script.lead_pause_ms + sum(s.pause_after_ms for s in script.segments)
    return script.chars / CHARS_PER_SECOND / speed + pauses / 1000.0


def plan_table(plan: JobPlan, titles: Mapping[str, str] | None = None) -> Table:
    """One row per script: segments, characters, estimated minutes; totals in the footer.
    With `titles` (chapters' titles by script id), a title column too."""
    table = Table(title=f"{plan.name} -> {plan.destination}", show_footer=True)
    seconds = [estimated_seconds(s) for s in plan.scripts]
    table.add_column("script", footer="total", no_wrap=True)
    if titles:
        table.add_column("title")
    table.add_column("voice")
    table.add_column(
        "segments", justify="right", footer=str(sum(len(s.segments) for s in plan.scripts))
    )
    table.add_column("chars", justify="right", footer=f"{plan.chars:,}")
    table.add_column("est. min", justify="right", footer=f"{sum(seconds) / 60:.1f}")
    table.add_column("formats")
    # Words the lexicon rewrote, when a lexicon rewrote any.
    hits = any(s.lexicon_hits for s in plan.scripts)
    if hits:
        total = sum(s.lexicon_hits for s in plan.scripts)
        table.add_column("lexicon", justify="right", footer=f"{total:,}")
    for script, secs in zip(plan.scripts, seconds, strict=True):
        p = script.params
        table.add_row(
            script.script_id,
            *([titles.get(script.script_id, "")] if titles else []),
            f"{p.speaker} / {p.model_id} @ {p.sampling_rate}",
            str(len(script.segments)),
            f"{script.chars:,}",
            f"{secs / 60:.1f}",
            ", ".join((*script.output.formats, *script.output.captions)),
            *([f"{script.lexicon_hits:,}"] if hits else []),
        )
    return table


def _when(row: JobStatus) -> str:
    return row.created_at.strftime("%Y-%m-%d %H:%M")


def jobs_table(rows: list[JobStatus]) -> Table:
    """All jobs, newest first."""
    table = Table(title="jobs")
    columns = ("job", "name", "state", "release", "scripts", "chars", "billed", "audio", "created")
    for name in columns:
        table.add_column(name, justify="right" if name in {"chars", "billed", "audio"} else "left")
    for row in rows:
        table.add_row(
            row.job_id,
            row.name,
            row.shown_state,
            "published" if row.published else "",
            f"{row.scripts_done}/{row.scripts}",
            f"{row.chars:,}",
            f"{row.billed_chars:,}",
            f"{seconds(row.audio_seconds):.1f}s",
            _when(row),
        )
    return table


def overrides_line(options: JobOptions) -> str | None:
    """The job's `--set` and `--voice-map`, as a command line would give them again."""
    words = [f"--set {shlex.quote(f'{k}={v}')}" for k, v in options.set]
    words += [f"--voice-map {shlex.quote(f'{old}={new}')}" for old, new in options.voice_map]
    return " ".join(words) or None


def summary_table(summary: JobSummary) -> RenderableType:
    """One job's scripts with state, attempts, characters, durations and errors, under a line
    naming what the job was asked to change (`--set`, `--voice-map`) when it was."""
    job = summary.job
    published = ", published" if job.published else ""
    title = f"job {job.job_id} ({job.name}): {job.shown_state}{published}"
    table = Table(title=title, caption=job.error or None)
    columns: tuple[str, ...] = ("script", "state", "segments", "attempts", "chars", "billed")
    columns += ("audio", "loudness", "error")
    for name in columns:
        table.add_column(name, no_wrap=name not in ("error", "loudness"), overflow="fold")
    for s in summary.scripts:
        problems = [s.error] if s.error else []
        problems += [f"warning: {w}" for w in s.warnings]
        table.add_row(
            s.script_id,
            s.state.value,
            f"{s.segments_done}/{s.segments}",
            str(s.attempts),
            f"{s.chars:,}",
            f"{s.billed_chars:,}",
            "" if s.audio_seconds is None else f"{seconds(s.audio_seconds):.2f}s",
            loudness_cell(s.loudness, s.outputs),
            "; ".join(problems),
        )
    if summary.book is not None:
        book = summary.book
        total = sum(float(str(c["duration_seconds"])) for c in book.chapters)
        table.add_row(
            f"book: {book.title}",
            book.state.value,
            f"{len(book.chapters)} chapters" if book.chapters else "",
            "",
            "",
            "",
            f"{seconds(total):.2f}s" if book.chapters else "",
            book.error or "",
        )
    overrides = overrides_line(job.options)
    if overrides is None:
        return table
    # One line however long, as given (a value such as inlineSpeedAlpha=[1, 2] is not markup).
    return Group(Text(f"overrides: {overrides}", no_wrap=True, overflow="ignore"), table)


def loudness_cell(record: LoudnessRecord | None, outputs: Sequence[OutputFile] = ()) -> str:
    """A script's measured loudness in one cell: integrated, range and true peak, and how it
    was leveled. One line when every output measures the same as shown; else a line per set
    of outputs that do, naming them, and the leveling on a line of its own."""
    if record is None:
        return ""
    how = f"({'limited' if record.limited else 'gain'} {record.gain_db:+.1f} dB)"
    # A row written before each output was measured has the programme's figures only.
    measured = [(o.format, o.loudness) for o in outputs if o.loudness is not None]
    if not measured:
        measured = [("", _as_loudness(record))]
    alike: dict[str, list[str]] = {}
    for fmt, loudness in measured:
        alike.setdefault(_figures(loudness), []).append(fmt)
    if len(alike) == 1:
        (figures,) = alike
        return "silent" if figures == _SILENT else f"{figures} {how}"
    lines = [f"{', '.join(formats)}: {figures}" for figures, formats in alike.items()]
    return "\n".join([*lines, how])


_SILENT = "silent"


def _as_loudness(record: LoudnessRecord) -> Loudness:
    return Loudness(record.integrated_lufs, record.true_peak_dbtp, record.range_lu)


def _figures(loudness: Loudness) -> str:
    if loudness.integrated_lufs is None:
        return _SILENT
    lra = "" if loudness.range_lu is None else f" LRA {loudness.range_lu:.1f}"
    peak = "" if loudness.true_peak_dbtp is None else f" TP {loudness.true_peak_dbtp:.1f}"
    return f"{loudness.integrated_lufs:.1f} LUFS{lra}{peak}"


def releases_table(production: Production, rows: list[Release]) -> Table:
    """A production's releases, newest first, the published one marked."""
    table = Table(title=f"releases of {production.name} at {production.destination}")
    for name in ("release", "state", "created", "voices", "scripts", "billed", "published"):
        table.add_column(name, no_wrap=name != "voices", overflow="fold")
    for r in rows:
        if r.published:
            shown = "published"
        elif r.pruned_at is not None:
            shown = "pruned"
        elif r.published_at is not None:
            shown = f"earlier, {r.published_at:%Y-%m-%d %H:%M}"
        else:
            shown = ""
        table.add_row(
            r.job_id,
            r.state.value,
            f"{r.created_at:%Y-%m-%d %H:%M:%S}",
            ", ".join(r.voices),
            str(r.scripts),
            f"{r.billed_chars:,}",
            shown,
        )
    return table


def schedules_table(schedules: list[Schedule], last: dict[int, Run], now: datetime) -> Table:
    """Every schedule: its cron, when it is next due, and what its last run came to (UTC)."""
    from pipeline.schedules import due_to_handle, next_due

    table = Table(title="schedules (times in UTC)")
    for name in ("schedule", "cron", "manifest", "next due", "last run", "outcome", "job"):
        table.add_column(name, no_wrap=name not in ("manifest", "job"), overflow="fold")
    for schedule in schedules:
        pending = due_to_handle(schedule.cron, schedule.since, now)
        if pending is not None:
            upcoming = f"{pending:%Y-%m-%d %H:%M:%S} (due)"
        else:
            upcoming = f"{next_due(schedule.cron, max(schedule.since, now)):%Y-%m-%d %H:%M:%S}"
        run = last.get(schedule.id)
        flags = " (only if changed)" if schedule.only_if_changed else ""
        table.add_row(
            schedule.name,
            schedule.cron + flags,
            schedule.manifest,
            upcoming,
            "" if run is None else f"{run.due_at:%Y-%m-%d %H:%M:%S}",
            "" if run is None else run.outcome.value,
            "" if run is None else (run.job_id or run.error or ""),
        )
    return table


def diff_lines(found: PlanDiff, *, scripts: bool) -> list[str]:
    """A diff in lines: the scripts that changed (when `scripts`), then what would be sent."""
    lines = []
    if scripts:
        if found.published is None:
            lines.append("nothing published yet: every script is new")
        else:
            lines.append(f"against published release {found.published}:")
            lines += [f"  + {script_id}" for script_id in found.added]
            lines += [f"  - {script_id}" for script_id in found.removed]
            lines += [f"  ~ {c.script_id} ({', '.join(c.reasons)})" for c in found.changed]
            if found.book_changed:
                lines.append("  ~ the book (its title, people, cover or chapters)")
            lines.append(
                f"  {len(found.added)} added, {len(found.removed)} removed, "
                f"{len(found.changed)} changed, {found.unchanged} unchanged"
            )
    if found.cost is None:
        cost = ""
    elif 0 < found.cost < 0.01:
        cost = ", under 0.01 at the configured price"
    else:
        cost = f", about {found.cost:,.2f} at the configured price"
    lines.append(
        f"to synthesize: {found.to_synthesize} of {found.segments} segments, "
        f"{found.chars:,} characters{cost} (the rest is cached)"
    )
    lines.append(
        f"estimated synthesis time: {_duration(found.seconds)} at {found.concurrency} at once"
    )
    return lines


def _duration(seconds: float) -> str:
    if 0 < seconds < 1:
        return "under 1s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


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


def _level(value: float | None, unit: str) -> str:
    return "silent" if value is None else f"{value:.1f} {unit}"


def check_lines(path: Path, figures: FileFigures, findings: list[Finding] | None) -> list[str]:
    """What `check` prints of one file: its figures, then each ACX rule when asked."""
    f, loud = figures, figures.loudness
    fmt = f"{f.codec}, {f.sample_rate} Hz, {f.channels} ch, {f.duration_seconds:.2f} s"
    if f.codec == "mp3":
        fmt += ", variable bitrate" if not f.constant_bitrate else f", {f.bitrate_kbps} kbps CBR"
    lines = [
        f"{path}: {fmt}",
        f"  loudness {_level(loud.integrated_lufs, 'LUFS')}, range {_level(loud.range_lu, 'LU')}, "
        f"true peak {_level(loud.true_peak_dbtp, 'dBTP')}",
        f"  RMS {_level(f.rms_db, 'dB')}, peak {_level(f.sample_peak_db, 'dBFS')}, "
        f"noise floor {_level(f.noise_floor_db, 'dB')}",
        f"  silence: head {f.head_silence_seconds:.2f} s, tail {f.tail_silence_seconds:.2f} s",
    ]
    for finding in findings or ():
        mark = "ok  " if finding.passed else "FAIL"
        lines.append(f"  {mark} {finding.figure}: {finding.shown} (ACX: {finding.rule})")
    return lines


def book_lines(plan: JobPlan) -> list[str]:
    """The plan's book: its title, files and chapters in order (none without a book)."""
    from pipeline.storage.keys import book_keys

    book = plan.book
    if book is None:
        return []
    m4b, m3u, mp3s = book_keys(book.folder, book.title, (c.title for c in book.chapters))
    cover = f", cover {book.cover_type}" if book.cover_type else ""
    lines = [f"book {book.title!r}: {len(book.chapters)} chapters -> {m4b}, {m3u}{cover}"]
    for number, (chapter, mp3) in enumerate(zip(book.chapters, mp3s, strict=True), start=1):
        lines.append(f"  {number:>3}. {chapter.title} ({chapter.script_id}) -> {mp3}")
    return lines
