"""What a task does around its stage: lease the unit, take over a dead worker's claim, run the
stage, send the next step.

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

import logging

from pipeline.stages import (
    FAILURES,
    KEY_REFUSED,
    Outcome,
    abandon_stage,
    settle_stage,
    stitch_stage,
    synth_stage,
)
from pipeline.store import (
    load_script,
    load_segment,
    release_script,
    release_segment,
    stitchable_scripts,
)
from pipeline.store.states import State
from workers.runtime import Runtime

log = logging.getLogger(__name__)

TAKEN_OVER = "taken over: the worker that claimed it stopped"


def _lease_wait(rt: Runtime, redelivered: bool) -> float:
    # A dead holder's lease runs out at most `lease_seconds` after its last renewal.
    return 1.5 * rt.settings.lease_seconds if redelivered else 0.0


def synthesize(rt: Runtime, segment_id: int, *, redelivered: bool = False) -> Outcome:
    """Synthesize one segment (or find its audio cached); send its script's stitch when due."""
    with rt.leases.hold(f"segment:{segment_id}", _lease_wait(rt, redelivered)) as held:
        if not held:
            log.info("skipped segment=%d: a live worker holds it", segment_id)
            return Outcome.SKIPPED
        with rt.sessions.begin() as session:
            if release_segment(session, segment_id, TAKEN_OVER):
                log.warning("took over segment=%d from a stopped worker", segment_id)
        outcome = rt.run(synth_stage(rt.ctx, segment_id))
    # A new transaction: the finish above has committed, so of two workers finishing a
    # script's last two segments at once, at least one sees the script complete.
    with rt.sessions.begin() as session:
        work = load_segment(session, segment_id)
        due = outcome not in FAILURES and work.script_pk in stitchable_scripts(session, work.job_id)
    log.info(
        "segment %s job=%s script=%s segment=%d index=%d state=%s",
        outcome.value,
        work.job_id,
        work.script_id,
        segment_id,
        work.segment.index,
        work.state.value,
    )
    if outcome is Outcome.REFUSED:
        # No other request with this key can succeed: fail what waits instead of sending it.
        abandoned = abandon_stage(rt.ctx, work.job_id, KEY_REFUSED)
        log.error("key refused job=%s scripts_failed=%d", work.job_id, abandoned)
    if outcome in FAILURES:
        rt.dispatch.finish(work.job_id)
    elif due:
        rt.dispatch.stitch(work.script_pk)
    return outcome


def stitch(rt: Runtime, script_pk: int, *, redelivered: bool = False) -> Outcome:
    """Stitch a script whose segments are all done; send its job's rollup afterwards."""
    with rt.leases.hold(f"script:{script_pk}", _lease_wait(rt, redelivered)) as held:
        if not held:
            log.info("skipped script_pk=%d: a live worker is stitching it", script_pk)
            return Outcome.SKIPPED
        with rt.sessions.begin() as session:
            if release_script(session, script_pk):
                log.warning("took over stitching script_pk=%d from a stopped worker", script_pk)
        with rt.stitching:
            outcome = stitch_stage(rt.ctx, script_pk)
    with rt.sessions.begin() as session:
        work = load_script(session, script_pk)
    log.info(
        "stitch %s job=%s script=%s state=%s",
        outcome.value,
        work.job_id,
        work.plan.script_id,
        work.state.value,
    )
    if work.state in (State.DONE, State.FAILED):
        rt.dispatch.finish(work.job_id)
    return outcome


def finish(rt: Runtime, job_id: str) -> State:
    """Roll the job up; when it is over, write its results file."""
    state = settle_stage(rt.ctx, job_id)
    if state in (State.DONE, State.FAILED, State.CANCELLED):
        log.info("job %s job=%s", state.value, job_id)
    return state
