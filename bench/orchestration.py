"""Orchestration cost: how close the pipeline comes to a bare client, and its CPU per prompt.

N short IVR prompts (one segment each, 8 kHz mu-law WAV) go to a local engine process that is
unpaced, adds no latency and has no concurrency limit, so the engine's own speed is the only
limit. Every figure comes from the same run:

    bare      a plain async httpx loop over the same requests at the same concurrency
    embedded  the embedded executor, as `rime-batch render` runs it, in this process
    celery    two Celery worker processes sharing the cap through Redis, a segment per task
    celery×8  the same with eight segments per task (RIME_BATCH_SEGMENTS_PER_TASK=8)

    rate      prompts per second, from the start of the job until it is done (stitched,
              results written)
    ratio     rate / the bare loop's rate
    cpu ms    CPU per prompt: this process (embedded, bare) or the workers (celery), with
              their child processes (ffmpeg) and, for celery, the submitting call

Goals: ratio >= 0.9 and at most 5 ms of CPU per prompt, for both executors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from sqlalchemy import select
from throughput import KEY, engine_process, prompts, write_manifest  # bench/ is on sys.path
from throughput_celery import start_redis, start_workers

from pipeline.executor import Executor
from pipeline.limits import LimitConfig, LocalLimiter
from pipeline.manifest import load_manifest
from pipeline.plan import JobPlan, build_plan
from pipeline.rime.http import AsyncRimeHttpClient
from pipeline.rime.params import AudioFormat, TtsRequest
from pipeline.run import run_job
from pipeline.settings import Settings
from pipeline.stages import Context
from pipeline.store import create_engine_for, migrate, record_plan
from pipeline.store.executors import RENDER
from pipeline.store.schema import JOBS
from pipeline.store.states import State
from workers.app import create_app
from workers.commands import submit

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class RunFigures:
    """One executor's run."""

    name: str
    prompts: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        """Prompts per second."""
        return self.prompts / self.seconds

    @property
    def cpu_ms(self) -> float:
        """CPU milliseconds per prompt."""
        return 1000 * self.cpu_seconds / self.prompts

    def line(self, bare: RunFigures | None) -> str:
        """One printed line; against the bare loop (rate ratio, CPU beyond it) if there is one."""
        ratio = f"ratio {self.rate / bare.rate:5.2f}" if bare is not None else " " * 10
        beyond = f" ({self.cpu_ms - bare.cpu_ms:+.2f} beyond bare)" if bare is not None else ""
        return (
            f"{self.name:<9} {self.prompts:>4} prompts in {self.seconds:6.2f}s  "
            f"{self.rate:6.1f}/s  {ratio}  cpu {self.cpu_ms:6.2f} ms/prompt{beyond}"
        )


def own_cpu() -> float:
    """CPU seconds of this process and its waited-for children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds of another process and its waited-for children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime are fields 14-17; fields[0] here is field 3 (state).
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


@contextmanager
def measured(cpu: Callable[[], float]) -> Iterator[list[float]]:
    """Yields a list that holds [wall seconds, cpu seconds] once the block is over."""
    result: list[float] = []
    wall, before = time.perf_counter(), cpu()
    yield result
    result += [time.perf_counter() - wall, cpu() - before]


def requests_of(plan: JobPlan) -> list[TtsRequest]:
    """The plan's requests, as the pipeline sends them."""
    return [
        TtsRequest(seg.text, script.params, seg.inline_speed_alpha)
        for script in plan.scripts
        for seg in script.segments
    ]


def run_bare(plan: JobPlan, url: str, concurrency: int) -> RunFigures:
    """A hand-written async loop: the same requests, the same cap, audio read and dropped."""
    bodies = [req.to_json() for req in requests_of(plan)]
    headers = {"Authorization": f"Bearer {KEY}", "Accept": AudioFormat.PCM.accept}

    async def go() -> None:
        gate = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one(body: dict[str, object]) -> None:
                async with gate:
                    response = await client.post(url, json=body, headers=headers)
                    response.raise_for_status()

            await asyncio.gather(*(one(b) for b in bodies))

    with measured(own_cpu) as m:
        asyncio.run(go())
    return RunFigures("bare", len(bodies), m[0], m[1])


def run_embedded(plan: JobPlan, url: str, concurrency: int, folder: Path) -> RunFigures:
    """The embedded executor on a fresh SQLite file and a fresh output folder."""
    database = f"sqlite:///{folder / 'embedded.db'}"
    migrate(database)
    db = create_engine_for(database)
    plan = replace(plan, destination=str(folder / "embedded-out"))
    with db.begin() as conn:
        job_id = record_plan(conn, plan)
    limits = LimitConfig(concurrency=concurrency, adaptive=False)

    async def go() -> State:
        async with AsyncRimeHttpClient(api_key=KEY, url=url, max_connections=concurrency) as client:
            with Executor.from_settings(db, RENDER, Settings()) as executor:
                ctx = Context(db, client, LocalLimiter(limits), executor)
                return await run_job(
                    ctx, job_id, workers=2 * concurrency, stitchers=Settings().stitch_parallelism
                )

    with measured(own_cpu) as m:
        state = asyncio.run(go())
    if state is not State.DONE:
        sys.exit(f"the embedded job ended {state.value}")
    return RunFigures("embedded", len(requests_of(plan)), m[0], m[1])


def run_celery(
    plan: JobPlan, url: str, concurrency: int, folder: Path, per_task: int, workers: int = 2
) -> RunFigures:
    """Two worker processes (after a warm-up job), a private Redis and a SQLite job table;
    `per_task` segments to a task."""
    redis_server, redis_url = start_redis(folder)
    database = f"sqlite:///{folder / 'celery.db'}"
    migrate(database)
    variables = {
        "CELERY_BROKER_URL": redis_url,
        "RIME_BATCH_REDIS_URL": redis_url,
        "DATABASE_URL": database,
        "RIME_API_URL": url,
        "RIME_API_KEY": KEY,
        "RIME_BATCH_CONCURRENCY": str(concurrency),
        # A fixed cap, as the bare loop has: the adaptive one would start at half of it.
        "RIME_BATCH_ADAPTIVE": "0",
        "RIME_BATCH_LIMIT_NAMESPACE": f"orchestration-{time.time_ns()}",
        "RIME_BATCH_SEGMENTS_PER_TASK": str(per_task),
    }
    processes = []
    try:
        processes = start_workers(workers, 2 * concurrency, variables, folder)
        app = create_app(
            Settings(
                CELERY_BROKER_URL=redis_url,
                DATABASE_URL=database,
                RIME_BATCH_SEGMENTS_PER_TASK=per_task,
            )
        )
        db = create_engine_for(database)

        def render(job: JobPlan) -> str:
            job_id = submit(job, app=app, database_url=database)
            while True:
                with db.begin() as conn:
                    state = conn.scalar(select(JOBS.c.state).where(JOBS.c.id == job_id))
                if state in (State.DONE, State.FAILED, State.CANCELLED):
                    if state is not State.DONE:
                        sys.exit(f"the celery job ended {state}")
                    return job_id
                time.sleep(0.02)

        # The first tasks of a worker build its runtime (migrations, clients): not per prompt.
        warm = replace(plan, scripts=plan.scripts[:4], destination=str(folder / "warm-out"))
        render(warm)
        pids = [p.pid for p in processes]

        def workers_cpu() -> float:
            return sum(process_cpu(pid) for pid in pids) + own_cpu()

        with measured(workers_cpu) as m:
            render(replace(plan, destination=str(folder / "celery-out")))
        name = "celery" if per_task == 1 else f"celery×{per_task}"
        return RunFigures(name, len(requests_of(plan)), m[0], m[1])
    finally:
        for process in processes:
            process.kill()
            process.wait()
        redis_server.kill()
        redis_server.wait()


def main() -> None:
    """Run the bare loop and the chosen executors against one engine; print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--mode",
        action="append",
        choices=["embedded", "celery", "celery-batched"],
        help="repeat for several",
    )
    args = parser.parse_args()
    modes = args.mode or ["embedded", "celery", "celery-batched"]
    print(
        f"{args.prompts} one-segment prompts, 8 kHz mu-law WAV, cap {args.concurrency}; "
        "engine unpaced, no added latency, no limit"
    )
    with (
        tempfile.TemporaryDirectory(prefix="rime-orchestration-") as tmp,
        engine_process(concurrency=0, ttfb_ms=0, pacing=0.0) as engine,
    ):
        folder = Path(tmp)
        plan = build_plan(load_manifest(write_manifest(folder, prompts(args.prompts))))
        # Warm the engine (espeak's voices load on first use) before anything is timed.
        run_bare(replace(plan, scripts=plan.scripts[:8]), engine.http_url, args.concurrency)
        bare = run_bare(plan, engine.http_url, args.concurrency)
        print(bare.line(None), flush=True)
        for mode in modes:
            mode_folder = folder / mode
            mode_folder.mkdir()
            if mode == "embedded":
                figures = run_embedded(plan, engine.http_url, args.concurrency, mode_folder)
            else:
                per_task = 8 if mode == "celery-batched" else 1
                figures = run_celery(plan, engine.http_url, args.concurrency, mode_folder, per_task)
            print(figures.line(bare), flush=True)


if __name__ == "__main__":
    main()
