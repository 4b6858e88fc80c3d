"""What one worker process shares across its task threads.

The worker runs Celery's `threads` pool: synthesis is network-bound, so one process keeps
many requests in flight with a thread per task. All of those threads share one asyncio event
loop, run on a thread of its own: a task submits its coroutine to it
(`run_coroutine_threadsafe`) and blocks until it is done. So the process has one
`AsyncRimeHttpClient` (one connection pool; an httpx client must never cross event loops) and
one `RedisLimiter` (one blocking Redis connection however many tasks wait for a slot), created
on that loop. Stitching is synchronous and runs on the task's own thread, a few at a time.

(An event loop per thread, the other way, measured no faster: each thread then builds its own
client and limiter on its first task, and a process holds as many Redis waiters as threads.)

The runtime is created lazily by the first task of a process, after any fork.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import redis
from celery import Celery

from pipeline.deliver import Sender
from pipeline.executor import Executor
from pipeline.limits.shared import RedisLimiter
from pipeline.rime.http import AsyncRimeHttpClient, request_timeout
from pipeline.rime.ws import WsSynthesizer
from pipeline.settings import Settings
from pipeline.stages import Context, Event
from pipeline.store import open_database
from pipeline.store.executors import WORKER
from workers.dispatch import STITCH_QUEUE, Dispatcher
from workers.sweep import Sweeper

log = logging.getLogger(__name__)
T = TypeVar("T")


def log_event(event: Event) -> None:
    """A stage's progress as one key=value log line."""
    where = f"job={event.job_id} script={event.script_id}"
    if event.segment is not None:
        where += f" segment={event.segment}"
    if event.kind == "attempt":
        log.warning(
            "retry %s attempt=%d/%d error=%s",
            where,
            event.attempt,
            event.max_attempts,
            event.error,
        )
    elif event.outcome == "failed":
        log.error("%s failed %s error=%s", event.kind, where, event.error)
    else:
        log.info("%s %s %s", event.kind, event.outcome, where)


class Runtime:
    """One per worker process: the event loop thread, the clients, the job table, the executor."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings = settings
        self._closed = False
        self.db = open_database(
            settings.database_url, pool_size=settings.threads + 2, max_overflow=settings.threads
        )
        # Set as a warm shutdown begins: the running tasks start no new segment.
        self.stopping = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="rime-batch-loop", daemon=True)
        self._thread.start()
        self.client, self.limiter = self.run(self._open())
        self.executor = Executor.from_settings(self.db, WORKER, settings)
        self.ctx = Context(
            self.db,
            self.client,
            self.limiter,
            self.executor,
            policy=settings.policy,
            on_event=log_event,
            stopping=self.stopping.is_set,
            timed_client=WsSynthesizer(
                settings.rime_ws_url,
                settings.rime_api_key,
                receive_timeout=settings.read_timeout_seconds,
            ),
        )
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.dispatch = Dispatcher(app)
        # Webhooks are sent from the task's own thread: a short blocking POST, like a stitch.
        self.sender = Sender(self.db, settings.delivery, settings.webhook_secret)
        self.stitching = threading.BoundedSemaphore(settings.stitch_parallelism)
        # None means every queue; a worker started with --queues consumes only those.
        consumed = app.amqp.queues.consume_from
        self.stitches_here = consumed is None or STITCH_QUEUE in consumed
        self.sweeper = Sweeper(
            self.db,
            self.dispatch,
            self.redis,
            executor_timeout=settings.executor_timeout_seconds,
            stall_seconds=settings.stall,
            interval=settings.sweep_seconds,
        )

    def start_sweeper(self) -> None:
        """Sweep for dead workers' work from this process (see `workers.sweep`)."""
        self.sweeper.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _open(self) -> tuple[AsyncRimeHttpClient, RedisLimiter]:
        settings = self.settings
        client = AsyncRimeHttpClient(
            api_key=settings.rime_api_key,
            url=settings.rime_api_url,
            # The shared cap bounds this process's requests in flight, and so its connections.
            max_connections=settings.limits.concurrency,
            timeout=request_timeout(settings.read_timeout_seconds),
        )
        limiter = RedisLimiter(
            settings.redis_url,
            settings.limits,
            namespace=settings.limit_namespace,
            lease_seconds=settings.lease_seconds,
        )
        return client, limiter

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the process's event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        """Close the clients and stop the loop (at worker shutdown); a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self.sweeper.stop()

        async def shut() -> None:
            await self.client.aclose()
            await self.limiter.aclose()
            # Remote stores are reached through `asyncio.to_thread`: stop those threads too.
            await self.loop.shutdown_default_executor()

        try:
            self.run(shut())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
            if not self.loop.is_running():
                self.loop.close()
            self.executor.close()
            self.sender.close()
            self.redis.close()
            self.db.dispose()


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime(settings: Settings, app: Celery) -> Runtime:
    """This process's runtime, created on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(settings, app)
        return _runtime


def stop_starting() -> None:
    """This process is shutting down: its runtime, if any, starts no new segment."""
    with _lock:
        if _runtime is not None:
            _runtime.stopping.set()


def close_runtime() -> None:
    """Close this process's runtime, if it was ever created."""
    global _runtime
    with _lock:
        runtime, _runtime = _runtime, None
    if runtime is not None:
        runtime.close()
