"""The embedded pipeline's own work per prompt, in instructions: a figure this VM's speed
cannot move.

CPU seconds on a shared VM swing by up to two times within an hour, so a change of a few
percent cannot be seen in `bench/orchestration.py`. Here the embedded executor renders N
one-segment prompts (8 kHz mu-law WAV) with an in-process synthesizer (the tests' tone
synthesizer: no HTTP, no engine) under valgrind's callgrind, which counts the instructions
every thread executes. Start-up (imports, the plan, migrations) is the same for any N, so two
runs, of `--small` and `--large` prompts, give the cost of one prompt as their difference:

    per prompt = (instructions(large) - instructions(small)) / (large - small)

That covers the job table, the cache and release files, stitching and encoding, the limiter
and the event loop; not Rime's HTTP client, which `bench/orchestration.py` measures against a
bare loop. Needs valgrind; both runs take a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLLECTED = re.compile(r"Collected : (\d+)")


def render(count: int) -> None:
    """Render `count` prompts with the embedded executor and the tone synthesizer."""
    sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
    from throughput import prompts, write_manifest

    from pipeline.executor import Executor
    from pipeline.limits import LimitConfig, LocalLimiter
    from pipeline.manifest import load_manifest
    from pipeline.plan import build_plan
    from pipeline.run import run_job
    from pipeline.settings import Settings
    from pipeline.stages import Context
    from pipeline.store import State, create_engine_for, migrate, record_plan
    from pipeline.store.executors import RENDER
    from tests.fixtures.synthesizers import ToneSynthesizer

    with tempfile.TemporaryDirectory(prefix="rime-instructions-") as tmp:
        folder = Path(tmp)
        plan = build_plan(load_manifest(write_manifest(folder, prompts(count))))
        plan = replace(plan, destination=str(folder / "out"))
        database = f"sqlite:///{folder / 'jobs.db'}"
        migrate(database)
        db = create_engine_for(database)
        with db.begin() as conn:
            job_id = record_plan(conn, plan)
        limits = LimitConfig(concurrency=16, adaptive=False)

        async def go() -> State:
            with Executor.from_settings(db, RENDER, Settings()) as executor:
                ctx = Context(db, ToneSynthesizer(), LocalLimiter(limits), executor)
                return await run_job(ctx, job_id, workers=32, stitchers=2)

        state = asyncio.run(go())
        db.dispose()
    if state is not State.DONE:
        sys.exit(f"the job ended {state.value}")


def instructions(count: int) -> int:
    """Instructions a whole run of `count` prompts executes, as callgrind counts them."""
    with tempfile.TemporaryDirectory(prefix="rime-callgrind-") as tmp:
        run = subprocess.run(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out"),
                *(sys.executable, __file__, "--render", str(count)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    found = COLLECTED.search(run.stderr)
    if run.returncode != 0 or found is None:
        sys.exit(f"the run of {count} prompts failed:\n{run.stderr[-3000:]}")
    return int(found.group(1))


def main() -> None:
    """Count both runs (side by side, one per core) and print the instructions per prompt."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=300)
    parser.add_argument("--render", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render is not None:
        render(args.render)
        return
    if args.large <= args.small:
        sys.exit("--large must be more than --small")
    if shutil.which("valgrind") is None:
        sys.exit("bench/instructions.py needs valgrind (Debian: apt-get install valgrind)")
    with ThreadPoolExecutor(2) as pool:
        small, large = pool.map(instructions, (args.small, args.large))
    per_prompt = (large - small) / (args.large - args.small)
    print(
        f"embedded pipeline, in-process synthesizer: {per_prompt / 1e6:.2f} M instructions "
        f"per prompt ({args.small} prompts: {small / 1e9:.3f} G, "
        f"{args.large}: {large / 1e9:.3f} G)"
    )


if __name__ == "__main__":
    main()
