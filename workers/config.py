"""Settings of the Celery workers: the pipeline's settings plus how workers share and recover.

Every timing here follows from one rule: the broker must not hand a task to a second worker
while the first is still on it, or Rime bills the segment twice. The Redis broker redelivers a
message that has been unacknowledged for `visibility_timeout` seconds, so that timeout is set
longer than the longest task can run (a segment's every retry, or one stitch), and a job whose
rows have not moved for that long is taken to have lost its worker.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any

from pydantic_settings import SettingsConfigDict

from pipeline.limits import LimitConfig
from pipeline.retry import DEFAULT_POLICY, RetryPolicy
from pipeline.settings import Settings

# Stitching a book-length script (decode, two loudness passes, encode) takes minutes on one
# core; this is the room left for it on top of the longest synthesis.
STITCH_SECONDS = 600.0


class WorkerSettings(Settings):
    """`RIME_BATCH_*` settings of the workers, on top of the pipeline's own."""

    model_config = SettingsConfigDict(env_prefix="RIME_BATCH_", extra="ignore")

    # Find the account's real limit (shared with live traffic): start at half the cap, probe up
    # by one; a 429 right after a raise steps back, any other 429 halves (pipeline.limits.Aimd).
    adaptive: bool = False
    probe_after: int = 10
    # After a step back or a halving, further 429s for this long are the same overload.
    cooldown_seconds: float = 2.0
    # Workers that share a namespace share one cap: one namespace per Rime account.
    limit_namespace: str = "rime-batch"
    # Threads per worker process (requests it can keep in flight); None = twice the cap.
    worker_threads: int | None = None
    # Stitches at once per worker process: ffmpeg is CPU-bound.
    stitch_parallelism: int = 2
    # A worker's claim on a segment or a stitch lives this long in Redis unless renewed.
    lease_seconds: float = 30.0
    # None: computed from the retry policy (see `visibility_timeout`).
    visibility_timeout: float | None = None
    stitch_seconds: float = STITCH_SECONDS
    # How often one of the workers looks for dead workers' claims and stalled jobs.
    sweep_seconds: float = 30.0
    # A running job with no claim or finish for this long gets its work sent again;
    # None = the visibility timeout.
    stall_seconds: float | None = None
    # The retry policy of one segment (None keeps the pipeline's default).
    retry_max_attempts: int | None = None
    retry_max_seconds: float | None = None
    retry_initial_wait: float | None = None
    retry_max_wait: float | None = None
    retry_jitter: float | None = None

    @property
    def policy(self) -> RetryPolicy:
        """The retry policy, with any overrides from the environment."""
        overrides: dict[str, Any] = {
            "max_attempts": self.retry_max_attempts,
            "max_seconds": self.retry_max_seconds,
            "initial_wait": self.retry_initial_wait,
            "max_wait": self.retry_max_wait,
            "jitter": self.retry_jitter,
        }
        return replace(DEFAULT_POLICY, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def limits(self) -> LimitConfig:
        """The limits every worker shares through Redis."""
        return LimitConfig(
            concurrency=self.concurrency,
            requests_per_minute=self.requests_per_minute,
            adaptive=self.adaptive,
            probe_after=self.probe_after,
        )

    @property
    def threads(self) -> int:
        """Task threads per worker process."""
        return self.worker_threads or 2 * self.concurrency

    @property
    def visibility(self) -> float:
        """The broker's visibility timeout in seconds (see the module's docstring)."""
        if self.visibility_timeout is not None:
            return self.visibility_timeout
        return visibility_timeout(self.policy, self.stitch_seconds)

    @property
    def stall(self) -> float:
        """Seconds without progress after which a running job's work is sent again."""
        return self.stall_seconds if self.stall_seconds is not None else self.visibility


def visibility_timeout(policy: RetryPolicy, stitch_seconds: float = STITCH_SECONDS) -> float:
    """Longer than any task can run: a segment's longest retrying plus room for a stitch."""
    return policy.longest_seconds + stitch_seconds


@lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    """The worker settings of this process, read once."""
    return WorkerSettings()
