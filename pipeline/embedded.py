"""The embedded executor's set-up, shared by `render` and the service: Rime's endpoint (the
local engine started in-process when there is no key), the limits, one job's stage context.

`rime-batch render` runs one job with it and exits; `rime-batch serve` without a broker keeps
one endpoint and one executor for its life and runs each job it is given with them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import SecretStr
    from sqlalchemy import Engine

    from pipeline.executor import Executor
    from pipeline.limits import LimitConfig
    from pipeline.plan import JobPlan
    from pipeline.settings import Settings
    from pipeline.stages import Context, Event
    from pipeline.store import State

# The segment cache of renders spoken by the in-process engine, apart from Rime's audio.
LOCAL_CACHE_NAMESPACE = "local"


@dataclass(frozen=True)
class Endpoint:
    """Where segments are synthesized from this process, and the cache namespace it implies."""

    http_url: str
    ws_url: str  # /ws3, for the scripts that ask for captions
    key: SecretStr | None
    namespace: str


def cache_namespace(settings: Settings) -> str:
    """Where a render from here finds cached segments: Rime's audio, or the local engine's
    apart from it."""
    return "" if settings.rime_api_key is not None else LOCAL_CACHE_NAMESPACE


@contextmanager
def rime_endpoint(
    settings: Settings, on_local: Callable[[str], None] | None = None
) -> Iterator[Endpoint]:
    """Rime's cloud when RIME_API_KEY is set, else the local engine started in-process
    (`on_local` is told its URL)."""
    if settings.rime_api_key is not None:
        yield Endpoint(settings.rime_api_url, settings.rime_ws_url, settings.rime_api_key, "")
        return
    from rime_local.config import EngineConfig
    from rime_local.server import start_in_thread

    engine = start_in_thread(EngineConfig())
    if on_local is not None:
        on_local(engine.base_url)
    try:
        yield Endpoint(engine.http_url, engine.ws_url, None, LOCAL_CACHE_NAMESPACE)
    finally:
        engine.stop()


def limits_of(
    settings: Settings, concurrency: int | None = None, rpm: int | None = None
) -> LimitConfig:
    """The account's limits, with a command's own concurrency and request budget over them."""
    limits = settings.limits
    if concurrency is not None:
        limits = replace(limits, concurrency=concurrency)
    if rpm is not None:
        limits = replace(limits, requests_per_minute=rpm)
    return limits


@asynccontextmanager
async def stage_context(
    db: Engine,
    endpoint: Endpoint,
    settings: Settings,
    limits: LimitConfig,
    executor: Executor,
    on_event: Callable[[Event], None] | None = None,
) -> AsyncIterator[Context]:
    """The stages' context for jobs run in this process: an HTTP client, a /ws3 client for
    captions and a local limiter."""
    from pipeline.limits import LocalLimiter
    from pipeline.rime.http import AsyncRimeHttpClient, request_timeout
    from pipeline.rime.ws import WsSynthesizer
    from pipeline.stages import Context

    # No more connections than requests the limiter lets through: idle ones cost CPU.
    async with AsyncRimeHttpClient(
        api_key=endpoint.key,
        url=endpoint.http_url,
        max_connections=limits.concurrency,
        timeout=request_timeout(settings.read_timeout_seconds),
    ) as client:
        yield Context(
            db,
            client,
            LocalLimiter(limits),
            executor,
            policy=settings.policy,
            on_event=on_event or (lambda _: None),
            cache_namespace=endpoint.namespace,
            timed_client=WsSynthesizer(
                endpoint.ws_url, endpoint.key, receive_timeout=settings.read_timeout_seconds
            ),
        )


async def run_here(ctx: Context, job_id: str, settings: Settings, limits: LimitConfig) -> State:
    """Run a recorded job to its end in this process; its state."""
    from pipeline.run import run_job

    return await run_job(
        ctx, job_id, workers=limits.concurrency * 2, stitchers=settings.stitch_parallelism
    )


def prepare_resume(db: Engine, job_id: str, settings: Settings, *, force: bool) -> JobPlan | None:
    """Make a job ready to run again here: its plan, with its unfinished work reset. None when
    it is done already (its publish, if it stopped halfway, is finished instead)."""
    from pipeline.deliver import require_secret
    from pipeline.publish import publish_when_due
    from pipeline.store import State, load_plan, transitions, views

    with db.begin() as conn:
        done = transitions.job_state(conn, job_id) is State.DONE
    if done:
        publish_when_due(db, job_id)
        return None
    with db.begin() as conn:
        if not force:
            views.check_not_running(conn, job_id, settings.executor_timeout_seconds)
        plan = load_plan(conn, job_id)
        require_secret(plan.options.notify, settings.webhook_secret)
        transitions.reset_for_resume(conn, job_id)
    return plan
