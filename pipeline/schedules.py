"""Schedules' rules, pure: names, cron expressions, and which due time a tick handles.

Every time is timezone-aware UTC. A cron expression has five fields (minute hour day month
weekday) or six, the sixth being seconds (croniter's convention), or is one of croniter's
`@hourly`-style aliases. A tick handles at most one due time per schedule: the newest one at or
before now that is after the last one handled, so the slots missed while nothing ticked (beat
was down) collapse into one run.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from pipeline.errors import InputError

# Letters, digits, `.`, `_` and `-`, starting with a letter or digit: safe in a shell, a log
# line and a file name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_CHARS = 100
# Five fields, or six with seconds; croniter's seventh (years) is left out: no cron has it.
_FIELDS = (5, 6)


def check_name(name: str) -> str:
    """The schedule name, or an InputError saying what is wrong with it."""
    if len(name) > MAX_NAME_CHARS:
        raise InputError(f"schedule name {name[:20]!r}...: longer than {MAX_NAME_CHARS} characters")
    if not _NAME.fullmatch(name):
        raise InputError(
            f"schedule name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def check_cron(expression: str) -> str:
    """The cron expression, normalized to single spaces, or an InputError in one line."""
    text = " ".join(expression.split())
    fields = text.split(" ")
    if not text.startswith("@") and len(fields) not in _FIELDS:
        raise InputError(
            f"--cron {expression!r}: give 5 fields (minute hour day month weekday), "
            "or 6 with seconds last"
        )
    try:
        croniter(text, datetime(2000, 1, 1, tzinfo=UTC))
    except CroniterBadCronError as exc:
        raise InputError(
            f"--cron {expression!r} is not a cron expression ({_reason(exc)})"
        ) from None
    try:
        next_due(text, datetime.now(UTC))
    except CroniterBadDateError:
        raise InputError(f"--cron {expression!r}: it is never due (no such date)") from None
    return text


def _reason(exc: CroniterError) -> str:
    # croniter repeats the expression in brackets before its reason; it is shown already.
    message = str(exc).splitlines()[0] if str(exc) else "not a cron expression"
    return re.sub(r"^\[[^\]]*\]\s*", "", message)


def next_due(cron: str, after: datetime) -> datetime:
    """The first due time of `cron` strictly after `after`."""
    found: datetime = croniter(cron, _utc(after)).get_next(datetime)
    return found


def latest_due(cron: str, now: datetime) -> datetime:
    """The newest due time of `cron` at or before `now`."""
    now = _utc(now)
    before: datetime = croniter(cron, now).get_prev(datetime)
    # get_prev is strict: when `now` is itself a due time, the one after `before` is `now`.
    following = next_due(cron, before)
    return following if following <= now else before


def due_to_handle(cron: str, since: datetime, now: datetime) -> datetime | None:
    """The due time a tick at `now` handles: the newest at or before `now` that is after
    `since` (the last one handled, or when the schedule was added); None when there is none."""
    if _utc(now) <= _utc(since):
        return None
    newest = latest_due(cron, now)
    return newest if newest > _utc(since) else None


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime given to a schedule rule; use an aware UTC datetime")
    return moment.astimezone(UTC)
