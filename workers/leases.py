"""Leases on units of work: which live worker is on a segment or a stitch right now.

The job table says a segment is running; it cannot say whether the worker running it is still
alive. A lease can: a task takes `lease:<unit>` in Redis before it claims the row, a keeper
thread renews every lease its process holds each third of `seconds`, and the task deletes it
when done. A worker killed with SIGKILL stops renewing, so its leases expire. A later task for
the same unit (the broker's redelivery, or the sweeper's) then takes the lease and knows that
a row still marked running belongs to nobody, and may take it over.

Redis going away is waited out: taking a lease retries until Redis answers, renewals and
releases log and carry on (an unreleased lease simply expires). A renewal puts back a lease
that Redis lost in a restart.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from pipeline.limits.redis_retry import REDIS_DOWN, retrying_sync

log = logging.getLogger(__name__)

# How often a task that waits for a lease asks again.
POLL_SECONDS = 0.2

# KEYS: lease. ARGV: token, ms. Renews our lease, or puts it back if Redis lost it; 0 when
# someone else holds it now.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lease. ARGV: token. Deletes the lease only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Leases:
    """Expiring, renewed, exclusive leases in Redis, one per unit of work."""

    def __init__(
        self, client: redis.Redis, seconds: float, prefix: str = "rime-batch:lease"
    ) -> None:
        if seconds <= 0:
            raise ValueError("lease seconds must be positive")
        self.redis = client
        self.seconds = seconds
        self.prefix = prefix
        self._ms = max(1, round(seconds * 1000))
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name="lease-keeper", daemon=True)
        self._keeper.start()

    def key(self, unit: str) -> str:
        """The Redis key of a unit's lease."""
        return f"{self.prefix}:{unit}"

    def acquire(self, unit: str, wait: float = 0.0) -> str | None:
        """Take the unit's lease, waiting up to `wait` seconds for its holder; the token or None."""
        token = secrets.token_hex(12)
        deadline = time.monotonic() + wait
        while True:
            taken = self._patient(
                lambda: self.redis.set(self.key(unit), token, nx=True, px=self._ms)
            )
            if taken:
                with self._lock:
                    self._held[unit] = token
                return token
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_SECONDS)

    def release(self, unit: str, token: str) -> None:
        """Give the lease back, if it is still ours."""
        with self._lock:
            if self._held.get(unit) == token:
                del self._held[unit]
        try:
            self._release(keys=[self.key(unit)], args=[token])
        except REDIS_DOWN as exc:
            log.warning("could not release lease %s (%s); it will expire", unit, type(exc).__name__)

    @contextmanager
    def hold(self, unit: str, wait: float = 0.0) -> Iterator[bool]:
        """Hold the unit's lease for the block; yields False (and holds nothing) if taken."""
        token = self.acquire(unit, wait)
        try:
            yield token is not None
        finally:
            if token is not None:
                self.release(unit, token)

    def holder(self, unit: str) -> str | None:
        """The token holding the unit's lease now, if any."""
        value = self._patient(lambda: self.redis.get(self.key(unit)))
        return None if value is None else bytes(value).decode()

    def close(self) -> None:
        """Stop renewing (held leases then expire on their own)."""
        self._stop.set()
        self._keeper.join(timeout=5)

    def _keep(self) -> None:
        interval = self.seconds / 3
        while not self._stop.wait(interval):
            with self._lock:
                held = list(self._held.items())
            for unit, token in held:
                try:
                    kept = self._renew(keys=[self.key(unit)], args=[token, self._ms])
                except Exception as exc:
                    # Whatever Redis answered (down, out of memory, read-only after a
                    # failover), keep renewing: a dead keeper silently frees live work.
                    log.warning("could not renew lease %s (%s)", unit, type(exc).__name__)
                    continue
                if not int(kept):
                    log.warning("lease %s was taken by another worker", unit)

    def _patient(self, call: Any) -> Any:
        return retrying_sync(log)(call)
