"""API latency of one job's page: GET /v1/jobs/{id} of a done 1,000-script job, from a real
`rime-batch serve` process on loopback, against reading the same summary from the job table
directly in the same run (the ratio is what HTTP, auth and JSON add). Also the console's HTML
page of the same job (its outputs are not files here, so no peak strip is computed: what is
timed is the page itself), the job list, /metrics and /health.

The server is a process of its own: one in this process would share the GIL with the client,
and every request would pay for the hand-over."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import update

from pipeline.plan import job_options, plan_manifest
from pipeline.reach import open_job_table
from pipeline.store import State, record_plan, views
from pipeline.store.schema import JOBS, SCRIPTS, SEGMENTS, utcnow
from service.tokens import create_token


def _manifest(folder: Path, scripts: int) -> Path:
    lines = "".join(
        f"  - id: prompt-{i:04d}\n    text: Thank you for calling, this is prompt {i}.\n"
        for i in range(scripts)
    )
    path = folder / "big.yaml"
    path.write_text(
        "job: big\noutput: out/big\n"
        "defaults: {speaker: cove, modelId: mistv2, formats: [wav, mp3]}\n"
        f"scripts:\n{lines}",
        encoding="utf-8",
    )
    return path


def _timed(call: Callable[[], object], runs: int) -> list[float]:
    call()  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def _line(what: str, times: list[float], base: float | None = None) -> str:
    median = statistics.median(times) * 1000
    p95 = sorted(times)[int(len(times) * 0.95) - 1] * 1000
    ratio = f"  {median / base:.1f}x the direct read" if base else ""
    return f"{what:<42} median {median:7.1f} ms  p95 {p95:7.1f} ms{ratio}"


def main() -> None:
    """Record a done job of `--scripts` scripts, serve it, time the reads."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scripts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--database-url", default=None, help="Default: a SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = args.database_url or f"sqlite:///{root / 'jobs.db'}"
        db = open_job_table(url)
        plan = plan_manifest(_manifest(root, args.scripts), options=job_options(None, None))
        with db.begin() as conn:
            job_id = record_plan(conn, plan)
            now = utcnow()
            # A finished job as the table holds one: every script with two outputs.
            for script in plan.scripts:
                outputs = [
                    {"format": f, "uri": f"{root}/{script.script_id}.{f}", "sha256": "0" * 64}
                    | {"bytes": 12345}
                    for f in ("wav", "mp3")
                ]
                row = SCRIPTS.c.job_id == job_id, SCRIPTS.c.script_id == script.script_id
                values = {"state": State.DONE, "outputs": outputs, "audio_seconds": 3.2}
                values |= {"billed_chars": script.chars, "finished_at": now}
                conn.execute(update(SCRIPTS).where(*row).values(**values))
            done = update(SEGMENTS).where(SEGMENTS.c.job_id == job_id)
            conn.execute(done.values(state=State.DONE, attempts=1))
            conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(state=State.DONE))
            _token, secret = create_token(conn, "bench")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RIME_", "CELERY_"))}
        env |= {"DATABASE_URL": url, "RIME_BATCH_SERVICE_ROOT": tmp, "RIME_API_KEY": "unused"}
        env["RIME_BATCH_LOG_LEVEL"] = "warning"
        command = [str(Path(sys.executable).with_name("rime-batch")), "serve", "--port", str(port)]
        server = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        probe = f"http://127.0.0.1:{port}/health"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(probe).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)

        def direct() -> object:
            with db.begin() as conn:
                return views.job_summary(conn, job_id)

        base = _timed(direct, args.runs)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {secret}"}
        ) as client:
            answer = client.get(f"/v1/jobs/{job_id}")
            assert answer.status_code == 200 and len(answer.json()["scripts"]) == args.scripts
            page = _timed(lambda: client.get(f"/v1/jobs/{job_id}").raise_for_status(), args.runs)
            html = client.get(f"/jobs/{job_id}")
            assert html.status_code == 200 and html.text.count("<audio") == 2 * args.scripts
            console = _timed(lambda: client.get(f"/jobs/{job_id}").raise_for_status(), args.runs)
            listed = _timed(lambda: client.get("/v1/jobs").raise_for_status(), args.runs)
            metrics = _timed(lambda: client.get("/metrics").raise_for_status(), args.runs)
            health = _timed(lambda: client.get("/health").raise_for_status(), args.runs)
            size = len(answer.content)
        server.terminate()
        server.wait(timeout=30)
        db.dispose()
    median = statistics.median(base) * 1000
    print(f"{args.scripts:,}-script done job, {size:,} bytes of JSON, {args.runs} runs each")
    print(_line("job summary from the job table (direct)", base))
    print(_line(f"GET /v1/jobs/{{id}} ({args.scripts:,} scripts)", page, median))
    print(_line(f"GET /jobs/{{id}}, console ({len(html.content):,} bytes)", console, median))
    print(_line("GET /v1/jobs (one job)", listed))
    print(_line("GET /metrics", metrics))
    print(_line("GET /health (no job table, no token)", health))


if __name__ == "__main__":
    main()
