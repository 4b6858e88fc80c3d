"""Errors raised by the job store.

RimeBatchError
└── StoreError
    ├── IllegalTransition   a state change the state machine does not allow
    ├── JobNotFound         no job (or more than one) matches what the user typed
    └── JobStillRunning     a resume of a job whose executor is alive
"""

from __future__ import annotations

from pipeline.errors import InputError, RimeBatchError


class StoreError(RimeBatchError):
    """Base of the job store's errors."""


class IllegalTransition(StoreError):
    """A state change the state machine forbids, e.g. resuming a finished job."""

    def __init__(self, what: str, current: str, target: str) -> None:
        self.what = what
        self.current = current
        self.target = target
        super().__init__(f"{what} is {current}; it cannot become {target}")


class JobNotFound(StoreError, InputError):
    """The job id (or prefix) the user gave matches no job, or several."""


class JobStillRunning(StoreError, InputError):
    """The job's render process (or, for a submitted job, a worker) is still beating."""
