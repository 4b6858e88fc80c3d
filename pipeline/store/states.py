"""The one state machine shared by jobs, scripts and segments."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pipeline.store.errors import IllegalTransition


class State(StrEnum):
    """Where a job, script or segment stands."""

    # Waiting for a worker: planned, retried, or reset by a resume.
    PENDING = "pending"
    # Claimed by exactly one worker: a segment being synthesized, a script being stitched, a job
    # with work under way.
    RUNNING = "running"
    # Finished for good; the outputs are written and nothing will touch it again.
    DONE = "done"
    # Gave up (a permanent error or retries exhausted); a resume puts it back to pending.
    FAILED = "failed"
    # Stopped by the user; a resume (or a submit) of the job brings it back to pending.
    CANCELLED = "cancelled"


TRANSITIONS: dict[State, frozenset[State]] = {
    # pending -> failed: a script whose segment failed before it could be stitched.
    State.PENDING: frozenset({State.RUNNING, State.FAILED, State.CANCELLED}),
    # running -> pending: a retry later, a released claim, or a resume after a crash.
    State.RUNNING: frozenset({State.DONE, State.FAILED, State.PENDING, State.CANCELLED}),
    State.FAILED: frozenset({State.PENDING}),
    State.DONE: frozenset(),
    State.CANCELLED: frozenset({State.PENDING}),
}


def can_transition(current: State, target: State) -> bool:
    """Whether the state machine allows `current -> target`."""
    return target in TRANSITIONS[current]


def check_transition(what: str, current: Iterable[State], target: State) -> None:
    """Raise IllegalTransition unless every state in `current` may become `target`."""
    for state in current:
        if not can_transition(state, target):
            raise IllegalTransition(what, state.value, target.value)
