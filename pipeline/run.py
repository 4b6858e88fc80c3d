"""The embedded executor: one process, one event loop, the job table in SQLite or PostgreSQL.

A pool of coroutines pulls pending segments; the shared limiter keeps requests in flight under
the cap, so the pool is a little larger than the cap to keep it full while others check the cache
or write the table. Every stage says what comes next: a script whose last segment it finished is
stitched at once (in a thread, a few at a time), while other scripts are still synthesizing.
Nothing here decides anything about the work; it only schedules what the stages return.
"""

from __future__ import annotations

import asyncio
from collections import deque

from pipeline.stages import (
    Context,
    Outcome,
    StageResult,
    settle_stage,
    start_stage,
    stitch_stage,
    synth_stage,
)
from pipeline.store import State


async def run_job(ctx: Context, job_id: str, *, workers: int, stitchers: int) -> State:
    """Run every pending segment and due stitch of a job to the end; returns the job's state."""
    if workers < 1 or stitchers < 1:
        raise ValueError(f"workers and stitchers must be at least 1, not {workers}, {stitchers}")
    todo = await asyncio.to_thread(start_stage, ctx, job_id)
    queue = deque(todo.segments)
    stitching = asyncio.Semaphore(stitchers)

    async def stitch(script_pk: int) -> None:
        async with stitching:
            await asyncio.to_thread(stitch_stage, ctx, script_pk)

    async with asyncio.TaskGroup() as group:

        def follow(result: StageResult) -> None:
            if result.next.stitch is not None:
                group.create_task(stitch(result.next.stitch))

        async def worker() -> None:
            while queue:
                work = queue.popleft()
                result = await synth_stage(ctx, work.segment_pk, work)
                follow(result)
                if result.outcome is Outcome.REFUSED:
                    # The stage failed what waits; those already waiting for a slot would send
                    # the same key again. Cancelled, their claimed segments go back to pending.
                    queue.clear()
                    for other in pool:
                        if other is not asyncio.current_task():
                            other.cancel()

        # Scripts complete before this run started (a resume after a crash in stitching).
        for script_pk in todo.stitches:
            group.create_task(stitch(script_pk))
        pool = [group.create_task(worker()) for _ in range(min(workers, max(1, len(queue))))]

    return await asyncio.to_thread(settle_stage, ctx, job_id)
