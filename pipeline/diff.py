"""What a render of a plan would change, and cost, against the published release.

`diff_plan` compares a plan with the release its production has published: scripts added,
removed and changed (and why: the text, the voice, the model, other synthesis parameters, the
output settings), and what would be sent to Rime. Only segments whose audio is not cached
count: a re-render of an unchanged manifest sends nothing. The estimate multiplies those
characters by the configured price, and the requests by how long requests took in earlier jobs
at the same destination (one second each when there is no history), spread over the cap.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, select

from pipeline.plan import JobPlan, PlannedSegment, ScriptPlan, timed_keys
from pipeline.settings import Settings
from pipeline.storage import open_store
from pipeline.storage.keys import is_cached, namespaced_cache_path
from pipeline.store import State, load_plan, productions
from pipeline.store.schema import JOBS, SEGMENTS

# Seconds a request takes when the job table has no finished segment at the destination yet.
DEFAULT_REQUEST_SECONDS = 1.0
# Earlier segments looked at for the request time.
_HISTORY = 500


@dataclass(frozen=True)
class ScriptChange:
    """A script of the plan that differs from the published release's, and how."""

    script_id: str
    reasons: tuple[str, ...]  # text, voice, model, params, output


@dataclass(frozen=True)
class PlanDiff:
    """A plan against its production's published release."""

    published: str | None  # the release compared with (None: nothing published yet)
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[ScriptChange, ...]
    unchanged: int
    segments: int  # segments of the plan
    to_synthesize: int  # distinct segments whose audio is not cached
    chars: int  # characters of those: what Rime would bill
    cost: float | None  # chars x the price per 1,000, when a price is configured
    seconds: float  # estimated wall time of the synthesis at `concurrency`
    concurrency: int
    book_changed: bool = False  # the book (its metadata, cover or chapters) differs or came or went

    @property
    def anything(self) -> bool:
        """Whether rendering the plan would send anything or change the published set (with
        nothing published yet, a render publishes its first release)."""
        if self.published is None:
            return True
        return bool(
            self.to_synthesize or self.added or self.removed or self.changed or self.book_changed
        )


def reasons(new: ScriptPlan, old: ScriptPlan) -> tuple[str, ...]:
    """Why a script differs from its earlier version, in words a reviewer reads."""
    found = []
    if [s.source for s in new.segments] != [s.source for s in old.segments]:
        found.append("text")
    if new.params.speaker != old.params.speaker:
        found.append("voice")
    if new.params.model_id != old.params.model_id:
        found.append("model")
    rest = {k: v for k, v in asdict(new.params).items() if k not in ("speaker", "model_id")}
    if rest != {k: v for k, v in asdict(old.params).items() if k not in ("speaker", "model_id")}:
        found.append("params")
    if (new.output, new.lead_pause_ms) != (old.output, old.lead_pause_ms) or [
        (s.pause_after_ms, s.inline_speed_alpha) for s in new.segments
    ] != [(s.pause_after_ms, s.inline_speed_alpha) for s in old.segments]:
        found.append("output")
    return tuple(found)


def diff_plan(
    db: Engine,
    plan: JobPlan,
    cached: Callable[[PlannedSegment], bool],
    *,
    concurrency: int,
    price_per_1k_chars: float | None = None,
) -> PlanDiff:
    """Compare `plan` with its production's published release; `cached` says which segments'
    audio needs no request."""
    with db.begin() as conn:
        found = productions.find(conn, plan.name, plan.destination)
        published = None if found is None else productions.get_production(conn, found).published_job
        earlier = load_plan(conn, published) if published else None
        before = {s.script_id: s for s in earlier.scripts} if earlier else {}
        request_seconds = _request_seconds(conn, plan.destination)
    now = {s.script_id: s for s in plan.scripts}
    changed = []
    for script_id, script in now.items():
        if script_id in before:
            why = reasons(script, before[script_id])
            if why:
                changed.append(ScriptChange(script_id, why))
    # One request per distinct cache key: two segments of the same text share one.
    missing: dict[str, PlannedSegment] = {}
    for script in plan.scripts:
        for segment in script.segments:
            if segment.cache_key not in missing and (plan.options.no_cache or not cached(segment)):
                missing[segment.cache_key] = segment
    chars = sum(s.chars for s in missing.values())
    return PlanDiff(
        published=published,
        added=tuple(k for k in now if k not in before) if published else (),
        removed=tuple(k for k in before if k not in now),
        changed=tuple(changed),
        unchanged=sum(1 for k in now if k in before) - len(changed),
        segments=sum(len(s.segments) for s in plan.scripts),
        to_synthesize=len(missing),
        chars=chars,
        cost=None if price_per_1k_chars is None else chars / 1000 * price_per_1k_chars,
        seconds=math.ceil(len(missing) / concurrency) * request_seconds,
        concurrency=concurrency,
        book_changed=earlier is not None and earlier.book != plan.book,
    )


def diff_at_destination(
    db: Engine, plan: JobPlan, cache_namespace: str, settings: Settings
) -> PlanDiff:
    """`diff_plan` against the segment cache at the plan's destination (`cache_namespace`: whose
    audio, "" for Rime's), at the configured cap and price."""
    store = open_store(plan.destination)
    timed = timed_keys(plan)
    return diff_plan(
        db,
        plan,
        lambda segment: is_cached(
            store,
            namespaced_cache_path(cache_namespace, segment.cache_key),
            words=segment.cache_key in timed,
        ),
        concurrency=settings.limits.concurrency,
        price_per_1k_chars=settings.price_per_1k_chars,
    )


def _request_seconds(conn: Connection, destination: str) -> float:
    """The median time of a segment's synthesis in earlier jobs at `destination`."""
    rows = conn.execute(
        select(SEGMENTS.c.started_at, SEGMENTS.c.finished_at)
        .join(JOBS, JOBS.c.id == SEGMENTS.c.job_id)
        .where(
            JOBS.c.destination == destination,
            SEGMENTS.c.state == State.DONE,
            SEGMENTS.c.attempts > 0,
            SEGMENTS.c.started_at.is_not(None),
            SEGMENTS.c.finished_at.is_not(None),
        )
        .order_by(SEGMENTS.c.finished_at.desc())
        .limit(_HISTORY)
    ).all()
    spans = [_seconds(start, end) for start, end in rows]
    return statistics.median(spans) if spans else DEFAULT_REQUEST_SECONDS


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())
