"""What a task does around its stage: run it, then do or send what the stage says comes next (a
stitch it can do at once, it does).

Every step is safe to run twice. The broker delivers a message again when its worker died
before acknowledging it, so a segment can arrive after it was synthesized (its claim fails, or
its audio is in the cache), a stitch after the script was stitched (`claim_stitch` lets exactly
one caller through) and a rollup after the job ended (it is a no-op).

Taking over is the stage's: a row marked running whose executor stopped beating was left by a
worker that died (SIGKILL, a lost host), and the store lets the next claimant take it over (see
`pipeline.store.executors`); a row whose executor still beats is skipped, however long its
holder takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager

from pipeline import scheduler
from pipeline.stages import Outcome, StageResult, settle_stage, stitch_stage, synth_stage
from pipeline.store import State, deliveries, plans
from pipeline.store.schema import utcnow
from workers.commands import submitter
from workers.runtime import Runtime

log = logging.getLogger(__name__)


def _send_next(rt: Runtime, result: StageResult) -> None:
    due = result.next.stitch
    # A worker that serves the stitch queue and has a stitcher free stitches at once: the
    # round trip of a task through the broker costs more than a short stitch itself.
    if due is not None and rt.stitches_here and rt.stitching.acquire(blocking=False):
        try:
            _stitch(rt, due, stitcher=contextlib.nullcontext())
        finally:
            rt.stitching.release()
    elif due is not None:
        rt.dispatch.stitch(due)
    if result.next.settle is not None:
        rt.dispatch.finish(result.next.settle)


def synthesize(rt: Runtime, segment_pk: int) -> StageResult:
    """Synthesize one segment (or find its audio cached); send what that made due."""
    return synthesize_all(rt, [segment_pk])[0]


def synthesize_all(rt: Runtime, segment_pks: Sequence[int]) -> list[StageResult]:
    """Synthesize a task's segments side by side on the process's loop (the shared cap still
    bounds its requests); send what each made due, even when another one raised.

    One result per segment, in order; a segment with no row (its job deleted) is skipped."""
    with rt.db.begin() as conn:
        works = {work.segment_pk: work for work in plans.load_segments(conn, segment_pks)}
    results = rt.run(_side_by_side(rt, [works.get(pk) for pk in segment_pks]))
    for result in results:
        if isinstance(result, StageResult):
            _send_next(rt, result)
    returned = [
        pk
        for pk, result in zip(segment_pks, results, strict=True)
        if isinstance(result, StageResult) and result.outcome is Outcome.RETURNED
    ]
    if returned:
        # A warm shutdown: what this task had not started goes back on the queue, for the
        # next worker, rather than holding the shutdown up.
        rt.dispatch.segments(returned)
        log.info("returned segments=%d to the queue", len(returned))
    for result in results:
        if isinstance(result, BaseException):
            # The task is retried whole; the segments that finished are skipped then.
            raise result
    return [result for result in results if isinstance(result, StageResult)]


async def _side_by_side(
    rt: Runtime, works: Sequence[plans.SegmentWork | None]
) -> list[StageResult | BaseException]:
    async def one(work: plans.SegmentWork | None) -> StageResult:
        if work is None:
            return StageResult(Outcome.SKIPPED)
        return await synth_stage(rt.ctx, work.segment_pk, work)

    return await asyncio.gather(*(one(work) for work in works), return_exceptions=True)


def stitch(rt: Runtime, script_pk: int) -> StageResult:
    """Stitch a script whose segments are all done; send its job's rollup when it is due."""
    return _stitch(rt, script_pk, stitcher=rt.stitching)


def _stitch(
    rt: Runtime, script_pk: int, *, stitcher: AbstractContextManager[object]
) -> StageResult:
    with stitcher:
        result = stitch_stage(rt.ctx, script_pk)
    _send_next(rt, result)
    return result


def finish(rt: Runtime, job_id: str) -> State:
    """Roll the job up; when it is over, write its results file and send its webhooks."""
    state = settle_stage(rt.ctx, job_id)
    if state in (State.DONE, State.FAILED, State.CANCELLED):
        log.info("job %s job=%s", state.value, job_id)
        with rt.db.begin() as conn:
            due = deliveries.due(conn, utcnow(), job_id=job_id)
        for row in due:
            rt.dispatch.deliver(row.delivery_id)
    return state


def deliver(rt: Runtime, delivery_id: int) -> str:
    """One attempt of a webhook delivery: its state afterwards, or "skipped" (not due, or
    another process has it)."""
    attempted = rt.sender.attempt(delivery_id)
    return "skipped" if attempted is None else attempted.state.value


def tick(rt: Runtime) -> list[scheduler.Fired]:
    """Fire the schedules that are due, each run a job submitted to the workers."""
    return scheduler.tick(rt.db, submitter(rt.dispatch.app))
