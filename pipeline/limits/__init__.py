"""Limits on requests to Rime: a concurrency cap, an optional requests-per-minute budget and an
adaptive cap (on by default), for one account.

`Limiter` is the one interface every executor uses. Each rule is written once, in Python, as
pure transitions over a small state with the clock passed in; the two limiters differ only in
where they keep that state.

    config       `Limiter` and `LimitConfig`, the one home of the limit defaults
    aimd         the adaptive cap: `AimdRule` over an `AimdState`; `Aimd` holds one in memory
    bucket       the per-minute budget: `BucketRule` over a `BucketState`; `TokenBucket` in memory
    local        `LocalLimiter`: the state in this process (the embedded executor)
    shared       `RedisLimiter`: the state in Redis, for every worker on every host (Celery)
    redis_state  a rule's state in one Redis hash, changed by an optimistic transaction
    lua          the Lua of admission bookkeeping: leases, wake-ups, renewals, the peak
    redis_retry  which errors mean Redis is down, and the backoff that waits it out

Adaptive mode (the default) is for accounts shared with live traffic, or whose limit is unknown
or set too high: a user who guesses the plan's concurrency wrong gets a slower job, not failed
scripts. The cap starts at half the configured one and grows by one after `probe_after`
successes in a row; a 429 just after a raise takes it back to the last cap that worked (and
makes the next probe wait longer), any other 429 halves it (additive increase, multiplicative
decrease). It never goes above the configured cap nor below one.

Importing this package does not import redis: the embedded `rime-batch render` never needs it.
Import `RedisLimiter` from `pipeline.limits.shared`.
"""

from pipeline.limits.config import LimitConfig, Limiter
from pipeline.limits.local import LocalLimiter

__all__ = ["LimitConfig", "Limiter", "LocalLimiter"]
