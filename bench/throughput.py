"""Synthesis throughput against the local engine at Rime's pay-as-you-go limits.

The engine runs in its own process with 5 concurrent generations per key, 300 ms added
time-to-first-byte and audio streamed at real time, so a request lasts about as long as its
audio. A job of 200 short, distinct IVR prompts (no cache hits) then runs through an executor;
the figures are:

    achieved  segments per second, from the start until the last segment's audio is in
              (the whole run, stitching and results included, is printed beside it)
    ideal     concurrency / mean request time, as the engine measured it
    ratio     achieved / ideal (1.0 means the cap was held full the whole time)
    429s      requests the engine refused for going over the cap (should be 0)

Modes: `embedded` (pipeline.run in this process) and `sequential` (a plain loop over the
same requests with the blocking client, what one writes by hand). A mode is a function from
a `Bench` (the engine, which is its own process so workers elsewhere reach it too, the plan, a
fresh folder) and the parsed flags to `Figures`, listed in MODES; another executor is another
entry there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from throughput_celery import celery_mode  # bench/ is on sys.path when run as a script

from pipeline.executor import Executor
from pipeline.limits import LimitConfig, LocalLimiter
from pipeline.manifest import load_manifest
from pipeline.plan import JobPlan, build_plan
from pipeline.rime.http import AsyncRimeHttpClient, RimeHttpClient
from pipeline.rime.params import AudioFormat, TtsRequest
from pipeline.run import run_job
from pipeline.settings import Settings
from pipeline.stages import Context
from pipeline.store import create_engine_for, migrate, record_plan
from pipeline.store.executors import RENDER
from pipeline.store.schema import SEGMENTS

KEY = "bench-key"
DEPARTMENTS = [
    "billing", "pharmacy", "radiology", "appointments", "lab results", "insurance",
    "medical records", "the nurse line", "physical therapy", "pediatrics", "cardiology",
]  # fmt: skip
CLOSINGS = [
    "Calls may be recorded for quality.",
    "Please have your member card ready.",
    "Our hours are eight to five on weekdays.",
    "Thank you for your patience.",
    "Stay on the line for more options.",
]


# The job


def prompts(count: int, seed: int = 5) -> list[str]:
    """`count` distinct IVR-like prompts of roughly 60 to 100 characters."""
    rng = random.Random(seed)
    texts: list[str] = []
    for i in range(count):
        department = rng.choice(DEPARTMENTS)
        closing = rng.choice(CLOSINGS)
        # The number makes every text distinct, so no segment is a cache hit.
        texts.append(f"For {department}, press {i % 9 + 1}. Extension {1000 + i}. {closing}")
    return texts


def write_manifest(folder: Path, texts: list[str], per_script: int = 1) -> Path:
    """A manifest of 8 kHz mu-law scripts of `per_script` texts each, one segment per text."""
    groups = [texts[i : i + per_script] for i in range(0, len(texts), per_script)]
    scripts = [{"id": f"script-{i:04d}", "text": "\n\n".join(g)} for i, g in enumerate(groups)]
    manifest = {
        "job": "throughput",
        "output": "out",
        "defaults": {
            "speaker": "cove",
            "samplingRate": 8000,
            "formats": ["wav-mulaw"],
            # Two prompts never fit together, so each paragraph is a segment of its own.
            "max_chars": 120,
        },
        "scripts": scripts,
    }
    path = folder / "jobs.yaml"
    path.write_text(json.dumps(manifest, indent=1))  # JSON is YAML
    return path


# The engine, in its own process so it never shares this one's GIL


@dataclass
class EngineProcess:
    """A local engine process and how to reach it."""

    proc: subprocess.Popen[str]
    base_url: str

    @property
    def http_url(self) -> str:
        """The synthesis endpoint."""
        return f"{self.base_url}/v1/rime-tts"

    def metrics(self) -> dict[str, Any]:
        """The engine's counters."""
        with urllib.request.urlopen(f"{self.base_url}/metrics", timeout=10) as response:
            data: dict[str, Any] = json.load(response)
        return data

    def reset_metrics(self) -> None:
        """Zero the counters."""
        request = urllib.request.Request(f"{self.base_url}/metrics/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass


@contextmanager
def engine_process(concurrency: int, ttfb_ms: int, pacing: float) -> Iterator[EngineProcess]:
    """Start `python -m rime_local` on a free port; stop it afterwards."""
    args = [sys.executable, "-m", "rime_local", "--port", "0", "--api-keys", KEY]
    args += ["--concurrency-per-key", str(concurrency), "--ttfb-ms", str(ttfb_ms)]
    args += ["--pacing", str(pacing)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Its request log would drown the figures; a failure to start shows in the banner check.
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # "Rime-compatible engine on http://host:port/... "
        if "http://" not in banner:
            raise RuntimeError(f"the engine did not start: {banner!r}")
        url = banner.split("http://", 1)[1].split("/", 1)[0]
        yield EngineProcess(proc, f"http://{url}")
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# Figures


@dataclass(frozen=True)
class Figures:
    """One mode's run."""

    mode: str
    segments: int
    seconds: float  # until the last segment's audio was in
    total_seconds: float  # the whole run, stitching and results included
    concurrency: int
    mean_request_seconds: float
    rejected_429: int
    peak_in_flight: int

    @property
    def achieved(self) -> float:
        """Segments per second while synthesizing."""
        return self.segments / self.seconds

    @property
    def ideal(self) -> float:
        """The cap held full: concurrency / mean request time."""
        return self.concurrency / self.mean_request_seconds

    @property
    def ratio(self) -> float:
        """achieved / ideal."""
        return self.achieved / self.ideal

    def line(self) -> str:
        """One printed line."""
        return (
            f"{self.mode:<11} {self.segments:>4} segments in {self.seconds:7.1f}s "
            f"(run {self.total_seconds:.1f}s)  "
            f"achieved {self.achieved:5.3f}/s  ideal {self.ideal:5.3f}/s  "
            f"ratio {self.ratio:5.3f}  mean request {self.mean_request_seconds:5.2f}s  "
            f"peak in flight {self.peak_in_flight}  429s {self.rejected_429}"
        )


@dataclass(frozen=True)
class Bench:
    """What every mode gets: the engine, the plan, a fresh folder, the cap."""

    engine: EngineProcess
    plan: JobPlan
    folder: Path
    concurrency: int

    def figures(self, mode: str, segments: int, seconds: float, total: float) -> Figures:
        """Figures of a run that just ended, from the engine's counters."""
        metrics = self.engine.metrics()
        return Figures(
            mode=mode,
            segments=segments,
            seconds=seconds,
            total_seconds=total,
            concurrency=self.concurrency,
            mean_request_seconds=metrics["mean_request_seconds"],
            rejected_429=metrics["rejected_429"],
            peak_in_flight=metrics["peak_in_flight"],
        )


# Modes


def run_embedded(bench: Bench) -> Figures:
    """The embedded executor, as `rime-batch render` runs it, on a fresh SQLite file."""
    url = f"sqlite:///{bench.folder / 'embedded.db'}"
    migrate(url)
    db = create_engine_for(url)
    with db.begin() as conn:
        job_id = record_plan(conn, bench.plan)
    limits = LimitConfig(concurrency=bench.concurrency, adaptive=False)

    async def go() -> None:
        async with AsyncRimeHttpClient(api_key=KEY, url=bench.engine.http_url) as client:
            with Executor.from_settings(db, RENDER, Settings()) as executor:
                ctx = Context(db, client, LocalLimiter(limits), executor)
                await run_job(
                    ctx,
                    job_id,
                    workers=limits.concurrency * 2,
                    stitchers=Settings().stitch_parallelism,
                )

    segments = sum(len(s.segments) for s in bench.plan.scripts)
    bench.engine.reset_metrics()
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    asyncio.run(go())
    total = time.perf_counter() - started
    with db.begin() as conn:
        last = conn.scalar(select(func.max(SEGMENTS.c.finished_at)))
    assert last is not None
    return bench.figures("embedded", segments, (last - started_at).total_seconds(), total)


def run_sequential(bench: Bench, limit: int | None = None) -> Figures:
    """One request after another with the blocking client, each written to a file."""
    folder = bench.folder / "sequential"
    folder.mkdir()
    requests = [
        (script.script_id, TtsRequest(seg.text, script.params, seg.inline_speed_alpha))
        for script in bench.plan.scripts
        for seg in script.segments
    ][:limit]
    bench.engine.reset_metrics()
    started = time.perf_counter()
    with RimeHttpClient(api_key=KEY, url=bench.engine.http_url) as client:
        for name, req in requests:
            pcm = client.synthesize(req, AudioFormat.PCM)
            (folder / f"{name}.pcm").write_bytes(pcm)
    seconds = time.perf_counter() - started
    return bench.figures("sequential", len(requests), seconds, seconds)


MODES: dict[str, Callable[[Bench, argparse.Namespace], Figures]] = {
    "embedded": lambda bench, _args: run_embedded(bench),
    "sequential": lambda bench, args: run_sequential(bench, args.sequential_segments),
    "celery": celery_mode(adaptive=False, api_key=KEY),
    "celery-aimd": celery_mode(adaptive=True, api_key=KEY),
}
CELERY_MODES = ["celery", "celery-aimd"]


def main() -> None:
    """Run the chosen modes against one engine and print a line of figures for each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=200)
    parser.add_argument(
        "--per-script", type=int, default=1, help="segments per script (1: IVR prompts)"
    )
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--ttfb-ms", type=int, default=300)
    parser.add_argument("--pacing", type=float, default=1.0, help="times real time; 0 = unpaced")
    parser.add_argument(
        "--sequential-segments",
        type=int,
        default=20,
        help="requests in the sequential loop (its rate does not depend on how many)",
    )
    parser.add_argument("--mode", action="append", choices=list(MODES), help="repeat for several")
    parser.add_argument(
        "--celery", action="store_true", help="the Celery modes only (2 worker processes)"
    )
    args = parser.parse_args()
    default = CELERY_MODES if args.celery else ["embedded", "sequential"]
    modes = args.mode or default

    texts = prompts(args.segments)
    chars = [len(t) for t in texts]
    print(
        f"{args.segments} segments of {min(chars)}-{max(chars)} characters, "
        f"{args.per_script} per script; engine: {args.concurrency} concurrent per key, "
        f"TTFB +{args.ttfb_ms} ms, pacing {args.pacing}x"
    )
    with (
        tempfile.TemporaryDirectory(prefix="rime-bench-") as tmp,
        engine_process(args.concurrency, args.ttfb_ms, args.pacing) as engine,
    ):
        folder = Path(tmp)
        plan = build_plan(load_manifest(write_manifest(folder, texts, args.per_script)))
        for mode in modes:
            mode_folder = folder / mode
            mode_folder.mkdir()
            bench = Bench(engine, plan, mode_folder, args.concurrency)
            print(MODES[mode](bench, args).line(), flush=True)


if __name__ == "__main__":
    main()
