"""How long the command line takes to start, against what Python and SQLAlchemy alone take.

Each command runs `--runs` times in a fresh process (bytecode cached, as an installed copy
runs); the median wall time is printed, with what the interpreter alone and an import of
SQLAlchemy (which `status` cannot do without) take in the same run:

    python     python -c pass
    sqlalchemy python -c "import sqlalchemy"
    --help     rime-batch --help
    status     rime-batch status, on an empty SQLite job table

Goal: `--help` and `status` under 0.3 s. `beyond` is a command's time less the floor it
cannot go below (the interpreter for `--help`, SQLAlchemy for `status`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.store import migrate


def median_seconds(command: list[str], env: dict[str, str], runs: int) -> float:
    """Median wall time of `command` over `runs` fresh processes (after one to warm caches)."""
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    """Print each command's median start-up and what it takes beyond its floor."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    cli = [sys.executable, "-c", "from pipeline.cli import main; main()"]
    with tempfile.TemporaryDirectory(prefix="rime-startup-") as tmp:
        database = f"sqlite:///{Path(tmp) / 'jobs.db'}"
        migrate(database)
        # Bytecode is written and read, as for an installed copy, whatever this shell says.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["DATABASE_URL"] = database
        floor = median_seconds([sys.executable, "-c", "pass"], env, args.runs)
        sqlalchemy = median_seconds([sys.executable, "-c", "import sqlalchemy"], env, args.runs)
        print(f"python      {floor:5.2f} s")
        print(f"sqlalchemy  {sqlalchemy:5.2f} s")
        for name, base in (("--help", floor), ("status", sqlalchemy)):
            seconds = median_seconds([*cli, name], env, args.runs)
            print(f"{name:<10}  {seconds:5.2f} s  beyond its floor {seconds - base:5.2f} s")


if __name__ == "__main__":
    main()
