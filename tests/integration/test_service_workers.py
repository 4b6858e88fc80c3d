"""The service with a broker: jobs go to real Celery worker processes, as `submit` sends them."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest

from rime_local.server import RunningEngine
from tests.fixtures.celery_workers import CeleryEnv, WorkerPool
from tests.fixtures.service import Service, write_manifest

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]


def test_jobs_run_on_the_workers_and_one_key_makes_one_job(
    service_factory: Callable[..., Service],
    celery_env: CeleryEnv,
    celery_workers: WorkerPool,
    engine: RunningEngine,
) -> None:
    env = celery_env.with_changes(rime_api_url=engine.http_url)
    celery_workers.start(env, count=1, threads=4)
    service = service_factory(env.database_url, **env.variables())
    manifest = write_manifest(service.root, lines=3).read_bytes()
    token = service.token()
    answers: list[httpx.Response] = []
    start = threading.Barrier(2)

    def send() -> None:
        with service.client(token) as client:
            start.wait()
            answers.append(
                client.post(
                    "/v1/jobs",
                    params={"name": "clinic.yaml"},
                    content=manifest,
                    headers={"Content-Type": "application/yaml", "Idempotency-Key": "w-1"},
                )
            )

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200, 201], [a.text for a in answers]
    [job_id] = {a.json()["job"]["id"] for a in answers}
    with service.client(token) as client:
        assert client.get("/health").json()["executor"] == "workers"
        ready = client.get("/ready").json()
        assert ready == {"ready": True, "database": None, "broker": None, "storage": None}
        detail = service.wait_for_job(client, job_id, timeout=180)
        assert detail["job"]["state"] == "done", celery_workers.logs()
        assert detail["job"]["published"] is True
        for script in detail["scripts"]:
            audio = client.get(script["outputs"][0]["url"])
            assert audio.status_code == 200 and audio.content[:4] == b"RIFF"
        # A re-render goes to the workers too; nothing changed, so nothing is billed.
        again = client.post(f"/v1/jobs/{job_id}/rerender", json={})
        assert again.status_code == 201, again.text
        redone = service.wait_for_job(client, again.json()["job"]["id"], timeout=180)
        assert redone["job"]["state"] == "done" and redone["job"]["billed_chars"] == 0
        assert client.get("/v1/jobs").json()["items"][0]["id"] == again.json()["job"]["id"]
