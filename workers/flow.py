"""What a task does around its stage: lease the unit, take over a dead worker's claim, run the
stage, then do or send what the stage says comes next (a stitch it can do at once, it does).

Every step is safe to run twice. The broker delivers a message again when its worker died
before acknowledging it, so a segment can arrive after it was synthesized (its claim fails, or
its audio is in the cache), a stitch after the script was stitched (`claim_stitch` lets exactly
one caller through) and a rollup after the job ended (it is a no-op).

Taking over. A row marked running whose lease nobody holds was left by a worker that died
(SIGKILL, a lost host). The task that now holds the lease puts the row back to pending with the
store's compare-and-set, then claims it as usual. A redelivered message waits a little for the
lease, since its previous holder may have died moments ago and its lease not yet run out.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager

from pipeline.stages import Outcome, StageResult, settle_stage, stitch_stage, synth_stage
from pipeline.store import State, transitions
from workers.runtime import Runtime

log = logging.getLogger(__name__)

TAKEN_OVER = "taken over: the worker that claimed it stopped"


def _lease_wait(rt: Runtime, redelivered: bool) -> float:
    # A dead holder's lease runs out at most `lease_seconds` after its last renewal.
    return 1.5 * rt.settings.lease_seconds if redelivered else 0.0


def _send_next(rt: Runtime, result: StageResult) -> None:
    due = result.next.stitch
    # A worker that serves the stitch queue and has a stitcher free stitches at once: the
    # round trip of a task through the broker costs more than a short stitch itself.
    if due is not None and rt.stitches_here and rt.stitching.acquire(blocking=False):
        try:
            _stitch(rt, due, redelivered=False, stitcher=contextlib.nullcontext())
        finally:
            rt.stitching.release()
    elif due is not None:
        rt.dispatch.stitch(due)
    if result.next.settle is not None:
        rt.dispatch.finish(result.next.settle)


def synthesize(rt: Runtime, segment_pk: int, *, redelivered: bool = False) -> StageResult:
    """Synthesize one segment (or find its audio cached); send what that made due."""
    with rt.leases.hold(f"segment:{segment_pk}", _lease_wait(rt, redelivered)) as held:
        if not held:
            log.info("skipped segment=%d: a live worker holds it", segment_pk)
            return StageResult(Outcome.SKIPPED)
        with rt.db.begin() as conn:
            if transitions.release_segment(conn, segment_pk, TAKEN_OVER):
                log.warning("took over segment=%d from a stopped worker", segment_pk)
        result = rt.run(synth_stage(rt.ctx, segment_pk))
    _send_next(rt, result)
    return result


def stitch(rt: Runtime, script_pk: int, *, redelivered: bool = False) -> StageResult:
    """Stitch a script whose segments are all done; send its job's rollup when it is due."""
    return _stitch(rt, script_pk, redelivered=redelivered, stitcher=rt.stitching)


def _stitch(
    rt: Runtime, script_pk: int, *, redelivered: bool, stitcher: AbstractContextManager[object]
) -> StageResult:
    # The lease first: a redelivered task waiting out a dead holder's lease holds no stitcher.
    with rt.leases.hold(f"script:{script_pk}", _lease_wait(rt, redelivered)) as held:
        if not held:
            log.info("skipped script_pk=%d: a live worker is stitching it", script_pk)
            return StageResult(Outcome.SKIPPED)
        with rt.db.begin() as conn:
            if transitions.release_script(conn, script_pk):
                log.warning("took over stitching script_pk=%d from a stopped worker", script_pk)
        with stitcher:
            result = stitch_stage(rt.ctx, script_pk)
    _send_next(rt, result)
    return result


def finish(rt: Runtime, job_id: str) -> State:
    """Roll the job up; when it is over, write its results file."""
    state = settle_stage(rt.ctx, job_id)
    if state in (State.DONE, State.FAILED, State.CANCELLED):
        log.info("job %s job=%s", state.value, job_id)
    return state
