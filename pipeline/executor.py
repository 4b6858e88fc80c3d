"""This process as an executor: its row in the job table, its heartbeat, and its claims.

One `Executor` per `render` and per worker process. A thread beats the row every
`heartbeat_seconds`; while it beats, every claim made with `claim()` is alive to everyone else
(see `pipeline.store.executors`). Each beat also asks which of the claims being watched are
still held: one that is not (its job was cancelled, or another executor took it over after
this one stopped beating) has its `on_lost` called, which stops the work on it at once. So a
`cancel` stops a request in flight within a heartbeat, on every executor.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import Self

from sqlalchemy import Engine

from pipeline.settings import Settings
from pipeline.store import executors
from pipeline.store.transitions import Claim

log = logging.getLogger(__name__)


class Executor:
    """This process's executor row, heartbeat thread and watched claims; `close()` at the end."""

    def __init__(
        self, db: Engine, kind: str, *, heartbeat_seconds: float, timeout_seconds: float
    ) -> None:
        if not 0 < heartbeat_seconds < timeout_seconds:
            raise ValueError("the heartbeat must be positive and shorter than the timeout")
        self.db = db
        self.kind = kind
        self.id = secrets.token_hex(8)
        self.heartbeat_seconds = heartbeat_seconds
        self.timeout_seconds = timeout_seconds
        self._numbers = itertools.count(1)
        self._watched: dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        with db.begin() as conn:
            executors.register(conn, self.id, kind)
        self._thread = threading.Thread(target=self._run, name="rime-batch-heartbeat", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, db: Engine, kind: str, settings: Settings) -> Executor:
        """An executor with the configured heartbeat and timeout."""
        return cls(
            db,
            kind,
            heartbeat_seconds=settings.heartbeat_seconds,
            timeout_seconds=settings.executor_timeout_seconds,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def claim(self) -> Claim:
        """A new claim of this executor, for one segment or stitch."""
        return Claim(f"{self.id}.{next(self._numbers)}", self.id)

    def dead_before(self) -> datetime:
        """Executors whose heartbeat is older than this are gone; their claims may be taken."""
        return executors.dead_before(self.timeout_seconds)

    @contextmanager
    def watching(self, claim: Claim, on_lost: Callable[[], None]) -> Iterator[None]:
        """Call `on_lost` (from the heartbeat thread) if the claim is lost during the block."""
        with self._lock:
            self._watched[claim.token] = on_lost
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(claim.token, None)

    def beat(self) -> set[str]:
        """Beat once; the watched claims found lost (their `on_lost` has been called)."""
        with self._lock:
            tokens = list(self._watched)
        with self.db.begin() as conn:
            if not executors.beat(conn, self.id):
                # Someone removed our row; put it back: our claims are ours while we beat.
                executors.register(conn, self.id, self.kind)
            held = executors.live_claims(conn, tokens)
        lost = set(tokens) - held
        for token in lost:
            with self._lock:
                on_lost = self._watched.pop(token, None)
            if on_lost is not None:
                on_lost()
        return lost

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self.beat()
            except Exception as exc:
                # The database away: keep trying. Our claims lapse if it stays away, and the
                # work on them cannot be recorded meanwhile anyway.
                log.warning("heartbeat failed (%s); retrying", type(exc).__name__)

    def close(self) -> None:
        """Stop beating and remove the row; a second call does nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            with self.db.begin() as conn:
                executors.unregister(conn, self.id)
        except Exception as exc:
            log.warning("could not remove executor %s (%s)", self.id, type(exc).__name__)
