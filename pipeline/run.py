"""The embedded executor: one process, one event loop, the job table in SQLite or PostgreSQL.

A pool of coroutines pulls pending segments; the shared limiter keeps requests in flight under
the cap, so the pool is a little larger than the cap to keep it full while others check the cache
or write the table. A script is stitched (in a thread, two at a time on a small machine) as soon
as its last segment is done, while other scripts are still synthesizing.
"""

from __future__ import annotations

import asyncio

from pipeline.stages import (
    FAILURES,
    KEY_REFUSED,
    Context,
    Outcome,
    abandon_stage,
    settle_stage,
    stitch_stage,
    synth_stage,
)
from pipeline.store import queries, repo
from pipeline.store.states import State

# Stitching is ffmpeg-bound; more at once than cores only thrashes.
STITCH_PARALLELISM = 2


async def run_job(ctx: Context, job_id: str, *, workers: int = 10) -> State:
    """Run every pending segment and script of a job to the end; returns the job's state."""
    with ctx.sessions.begin() as session:
        repo.start_job(session, job_id)
        pending = queries.list_segments(session, job_id, [State.PENDING])
    queue: asyncio.Queue[queries.SegmentRef] = asyncio.Queue()
    for ref in pending:
        queue.put_nowait(ref)
    stitching = asyncio.Semaphore(STITCH_PARALLELISM)
    # Set on a 401: every other request would be refused too, so none is sent.
    refused = asyncio.Event()
    remaining: dict[int, int] = {}
    for ref in pending:
        remaining[ref.script_pk] = remaining.get(ref.script_pk, 0) + 1

    async def stitch(script_pk: int) -> None:
        async with stitching:
            await asyncio.to_thread(stitch_stage, ctx, script_pk)

    async with asyncio.TaskGroup() as group:

        async def worker() -> None:
            while not queue.empty() and not refused.is_set():
                ref = queue.get_nowait()
                outcome = await synth_stage(ctx, ref.segment_id)
                if outcome is Outcome.REFUSED:
                    refused.set()
                    # Those waiting for a slot would send the same key again; stop them now.
                    for other in pool:
                        if other is not asyncio.current_task():
                            other.cancel()
                remaining[ref.script_pk] -= 1
                if outcome not in FAILURES and remaining[ref.script_pk] == 0:
                    group.create_task(stitch(ref.script_pk))

        # Scripts that were complete before this run started (a resume after a crash in stitching).
        with ctx.sessions.begin() as session:
            ready = queries.stitchable_scripts(session, job_id)
        for script_pk in ready:
            if script_pk not in remaining:
                group.create_task(stitch(script_pk))
        # Cancelled by a refused key; their claimed segments go back to pending.
        pool = [group.create_task(worker()) for _ in range(min(workers, max(1, len(pending))))]

    if refused.is_set():
        await asyncio.to_thread(abandon_stage, ctx, job_id, KEY_REFUSED)
    return await asyncio.to_thread(settle_stage, ctx, job_id)
