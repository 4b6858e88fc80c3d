"""Celery throughput against the local engine: ratio to ideal and 429s, fixed and adaptive cap.

Two worker processes (real `celery -A workers.app worker` processes) share one cap through
Redis and render a job of many one-sentence segments from an engine that allows 5 concurrent
generations and waits 300 ms before the first byte. Ideal time is what the engine's own
mean request time allows at its limit: requests x mean request seconds / limit.

- fixed: the workers are told the engine's limit (cap 5). Aim: ratio >= 0.9, no 429.
- adaptive: the workers do not know it (cap 10, RIME_BATCH_ADAPTIVE=1) and find it from 429s.
  Aim: ratio >= 0.8, 429s under 2% of requests.

Redis: a redis-server of its own on a free port (or --redis-url). Job table: a SQLite file in
a temporary folder (or --database-url, e.g. PostgreSQL).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import func, select

from pipeline.manifest import load_manifest
from pipeline.plan import JobPlan, build_plan
from pipeline.settings import Settings
from pipeline.store import create_engine_for, migrate
from pipeline.store.schema import JOBS, SEGMENTS
from pipeline.store.states import State
from workers.app import create_app
from workers.commands import submit

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "river", "lantern", "harbor", "meadow", "engine", "library", "orchard", "signal", "window",
    "garden", "morning", "letter", "station", "mountain", "pocket", "silver", "winter", "candle",
]  # fmt: skip


@dataclass(frozen=True)
class Mode:
    """One configuration of the workers."""

    name: str
    cap: int
    adaptive: bool


@dataclass(frozen=True)
class CeleryFigures:
    """What one run measured."""

    mode: Mode
    segments: int
    synth_seconds: float
    job_seconds: float
    ideal_seconds: float
    requests: int
    rejected_429: int
    peak_in_flight: int

    @property
    def ratio(self) -> float:
        """Ideal time over the time the segments really took."""
        return self.ideal_seconds / self.synth_seconds

    @property
    def share_429(self) -> float:
        """429 answers as a share of every request the engine received."""
        return self.rejected_429 / self.requests if self.requests else 0.0


def sentence(script: int, line: int) -> str:
    """A one-sentence segment, different for every (script, line)."""
    a, b = WORDS[(script * 7 + line) % len(WORDS)], WORDS[(script + line * 3 + 5) % len(WORDS)]
    return f"Chapter {script + 1}, line {line + 1}: the {a} by the {b} is quiet tonight."


def make_plan(folder: Path, scripts: int, lines: int) -> JobPlan:
    """A job of `scripts` scripts of `lines` one-sentence segments, written as WAV."""
    body = [
        "job: celery-bench",
        f"output: {folder / 'out'}",
        "defaults:",
        "  speaker: cove",
        "  modelId: mistv2",
        "  samplingRate: 16000",
        "  formats: [wav]",
        "  max_chars: 80",
        "scripts:",
    ]
    for s in range(scripts):
        text = " ".join(sentence(s, i) for i in range(lines))
        body += [f"  - id: chapter-{s + 1}", f"    text: {text!r}"]
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "jobs.yaml"
    manifest.write_text("\n".join(body) + "\n", encoding="utf-8")
    return build_plan(load_manifest(manifest))


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server; its process and URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found; pass --redis-url")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    client.close()
    return process, f"redis://127.0.0.1:{port}/0"


def start_workers(
    count: int, threads: int, variables: dict[str, str], folder: Path, name: str = "bench"
) -> list[subprocess.Popen[bytes]]:
    """Worker processes `name`1, `name`2, ..., returned once each has logged that it is ready."""
    # RIME_BATCH_* tuning passes through (e.g. RIME_BATCH_PROBE_AFTER); where Rime is does not.
    leave_out = ("RIME_API_", "RIME_WS_", "CELERY_", "DATABASE_URL")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(leave_out)}
    environ.update(variables)
    processes, logs = [], []
    for n in range(count):
        log = folder / f"{name}-{n + 1}.log"
        logs.append(log)
        with log.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    [
                        *(sys.executable, "-m", "celery", "-A", "workers.app", "worker"),
                        *("--pool=threads", f"--concurrency={threads}", "--loglevel=INFO"),
                        *(f"--hostname={name}{n + 1}@%h", "--without-mingle", "--without-gossip"),
                    ],
                    cwd=ROOT,
                    env=environ,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + 60
    while not all(" ready." in log.read_text(errors="replace") for log in logs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            for process in processes:
                process.kill()
                process.wait()
            sys.exit("a worker did not start:\n" + "\n".join(log.read_text() for log in logs))
        time.sleep(0.1)
    return processes


class LimitedEngine:
    """The local engine in a process of its own, as Rime would be: on the other end of a socket."""

    def __init__(self, limit: int, ttfb_ms: int, log: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.http_url = f"{self.base_url}/v1/rime-tts"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "rime_local", "--port", str(self.port)),
                    *("--concurrency-per-key", str(limit), "--ttfb-ms", str(ttfb_ms)),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.base_url}/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    sys.exit("the engine did not start:\n" + log.read_text(errors="replace"))
                time.sleep(0.1)

    def metrics(self) -> dict[str, Any]:
        """GET /metrics."""
        response = httpx.get(f"{self.base_url}/metrics", timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def stop(self) -> None:
        """Stop the engine process."""
        self.process.terminate()
        self.process.wait(timeout=10)


@dataclass(frozen=True)
class Run:
    """How long one job took on the workers, in seconds from submitting it."""

    segments: int
    synth_seconds: float  # until every segment's audio was in
    job_seconds: float  # until the job was done, stitching and results included


def render_on_workers(
    plan: JobPlan,
    *,
    rime_api_url: str,
    cap: int,
    adaptive: bool,
    folder: Path,
    workers: int = 2,
    threads: int = 8,
    rime_api_key: str | None = None,
    redis_url: str | None = None,
    database_url: str | None = None,
    extra: dict[str, str] | None = None,
    timeout: float = 600.0,
) -> Run:
    """Render `plan` on fresh worker processes; a private Redis and SQLite file unless given."""
    folder.mkdir(parents=True, exist_ok=True)
    server = None
    if redis_url is None:
        server, redis_url = start_redis(folder)
    if database_url is None:
        database_url = f"sqlite:///{folder / 'jobs.db'}"
    migrate(database_url)
    variables = {
        "CELERY_BROKER_URL": redis_url,
        "RIME_BATCH_REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "RIME_API_URL": rime_api_url,
        "RIME_BATCH_CONCURRENCY": str(cap),
        "RIME_BATCH_ADAPTIVE": "1" if adaptive else "0",
        "RIME_BATCH_LIMIT_NAMESPACE": f"bench-{time.time_ns()}",
        "RIME_BATCH_WORKER_THREADS": str(threads),
        **(extra or {}),
    }
    if rime_api_key is not None:
        variables["RIME_API_KEY"] = rime_api_key
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes = start_workers(workers, threads, variables, folder)
        settings = Settings(CELERY_BROKER_URL=redis_url, DATABASE_URL=database_url)
        db = create_engine_for(database_url)
        started = time.monotonic()
        job_id = submit(plan, app=create_app(settings), database_url=database_url)
        total = sum(len(s.segments) for s in plan.scripts)
        synth_seconds = 0.0
        while True:
            with db.begin() as conn:
                done = conn.scalar(
                    select(func.count()).where(
                        SEGMENTS.c.job_id == job_id, SEGMENTS.c.state == "done"
                    )
                )
                state = conn.scalar(select(JOBS.c.state).where(JOBS.c.id == job_id))
                over = state in (State.DONE, State.FAILED)
            if done == total and not synth_seconds:
                synth_seconds = time.monotonic() - started
            if over:
                return Run(
                    total, synth_seconds or time.monotonic() - started, time.monotonic() - started
                )
            if time.monotonic() - started > timeout:
                sys.exit(f"the job did not finish within {timeout} s")
            time.sleep(0.1)
    finally:
        for process in processes:
            process.kill()
            process.wait()
        if server is not None:
            server.kill()
            server.wait()


def run_mode(mode: Mode, args: argparse.Namespace, folder: Path) -> CeleryFigures:
    """Render one job with the workers configured as `mode`; its figures."""
    logs = args.logs / mode.name if args.logs else folder / mode.name
    logs.mkdir(parents=True, exist_ok=True)
    engine = LimitedEngine(args.engine_limit, args.ttfb_ms, logs / "engine.log")
    extra = {}
    if args.probe_after is not None:
        extra["RIME_BATCH_PROBE_AFTER"] = str(args.probe_after)
    if args.cooldown is not None:
        extra["RIME_BATCH_COOLDOWN_SECONDS"] = str(args.cooldown)
    try:
        run = render_on_workers(
            make_plan(folder / mode.name, args.scripts, args.lines),
            rime_api_url=engine.http_url,
            cap=mode.cap,
            adaptive=mode.adaptive,
            folder=logs,
            workers=args.workers,
            threads=args.threads,
            redis_url=args.redis_url,
            database_url=args.database_url,
            extra=extra,
            timeout=args.timeout,
        )
        metrics = engine.metrics()
    finally:
        engine.stop()
    return CeleryFigures(
        mode=mode,
        segments=run.segments,
        synth_seconds=run.synth_seconds,
        job_seconds=run.job_seconds,
        ideal_seconds=metrics["completed"] * metrics["mean_request_seconds"] / args.engine_limit,
        requests=metrics["requests"],
        rejected_429=metrics["rejected_429"],
        peak_in_flight=metrics["peak_in_flight"],
    )


def celery_mode(adaptive: bool, api_key: str | None = None) -> Callable[[Any, Any], Any]:
    """A mode for bench/throughput.py (`MODES`): its engine and plan, on 2 worker processes.

    Fixed: the workers' cap is the engine's. Adaptive: twice that, and they find the real one.
    """
    name = "celery-aimd" if adaptive else "celery"

    def run(bench: Any, _args: Any) -> Any:
        cap = bench.concurrency * 2 if adaptive else bench.concurrency
        bench.engine.reset_metrics()
        # A destination of its own: with the plan's, a mode run after another finds every
        # segment in that one's cache and sends nothing.
        plan = replace(bench.plan, destination=str(bench.folder / "out"))
        result = render_on_workers(
            plan,
            rime_api_url=bench.engine.http_url,
            rime_api_key=api_key,
            cap=cap,
            adaptive=adaptive,
            folder=bench.folder,
        )
        return bench.figures(name, result.segments, result.synth_seconds, result.job_seconds)

    return run


def main() -> None:
    """Run the fixed and the adaptive mode and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="task threads per worker")
    parser.add_argument("--scripts", type=int, default=20)
    parser.add_argument("--lines", type=int, default=15, help="segments per script")
    parser.add_argument("--engine-limit", type=int, default=5)
    parser.add_argument("--ttfb-ms", type=int, default=300)
    parser.add_argument("--adaptive-cap", type=int, default=10)
    parser.add_argument("--probe-after", type=int, help="adaptive: successes before the cap grows")
    parser.add_argument("--cooldown", type=float, help="adaptive: seconds one halving lasts")
    parser.add_argument("--mode", choices=["fixed", "adaptive", "both"], default="both")
    parser.add_argument("--redis-url", help="default: a private redis-server")
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--logs", type=Path, help="keep the workers' logs in this folder")
    args = parser.parse_args()

    modes = [
        Mode("fixed", args.engine_limit, adaptive=False),
        Mode("adaptive", args.adaptive_cap, adaptive=True),
    ]
    modes = [m for m in modes if args.mode in (m.name, "both")]
    with tempfile.TemporaryDirectory(prefix="rime-batch-bench-") as tmp:
        results = [run_mode(m, args, Path(tmp)) for m in modes]

    print(
        f"{args.workers} workers x {args.threads} threads, engine limit {args.engine_limit}, "
        f"TTFB {args.ttfb_ms} ms, {results[0].segments} segments"
    )
    if args.probe_after is not None or args.cooldown is not None:
        print(f"adaptive tuning: probe after {args.probe_after}, cool-down {args.cooldown} s")
    print(
        f"{'mode':<9} {'cap':>4} {'synth s':>8} {'job s':>7} {'ideal s':>8} {'ratio':>6} "
        f"{'requests':>9} {'429s':>5} {'429 %':>6} {'peak':>5}"
    )
    for r in results:
        print(
            f"{r.mode.name:<9} {r.mode.cap:>4} {r.synth_seconds:>8.2f} {r.job_seconds:>7.2f} "
            f"{r.ideal_seconds:>8.2f} {r.ratio:>6.2f} {r.requests:>9} {r.rejected_429:>5} "
            f"{100 * r.share_429:>5.1f}% {r.peak_in_flight:>5}"
        )


if __name__ == "__main__":
    main()
