"""The API's jobs over a real server on loopback, on SQLite and PostgreSQL, with the embedded
executor: create from a manifest (YAML, JSON, CSV), validation as 422s naming file, line and
field, idempotency under concurrent POSTs, outputs served only from the job table, re-render,
releases, schedules, metrics; the Rime API key never shows."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.manifest.models import MAX_MANIFEST_BYTES
from pipeline.reach import open_job_table
from pipeline.store.schema import JOBS
from rime_local.server import RunningEngine
from tests.fixtures.s3 import S3Env
from tests.fixtures.service import Service, write_manifest

ServiceFactory = Callable[..., Service]
YAML = {"Content-Type": "application/yaml"}


@pytest.fixture
def service(service_factory: ServiceFactory, database_url: str) -> Service:
    return service_factory(database_url)


def post_manifest(
    client: httpx.Client, body: bytes | str, name: str = "clinic.yaml", **params: Any
) -> httpx.Response:
    headers = dict(YAML)
    headers.update(params.pop("headers", {}))
    return client.post("/v1/jobs", params={"name": name, **params}, content=body, headers=headers)


def jobs_in_table(service: Service) -> int:
    db = open_job_table(service.database_url)
    try:
        with db.begin() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(JOBS)) or 0)
    finally:
        db.dispose()


def test_a_posted_manifest_renders_publishes_and_serves_its_audio(service: Service) -> None:
    manifest = write_manifest(service.root, lines=3)
    with service.client(service.token()) as client:
        created = post_manifest(client, manifest.read_bytes())
        assert created.status_code == 201, created.text
        job = created.json()["job"]
        assert created.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["name"] == "clinic" and job["scripts"] == 3
        assert job["destination"] == str(service.root / "out" / "clinic")

        detail = service.wait_for_job(client, job["id"])
        assert detail["job"]["state"] == "done" and detail["job"]["published"] is True
        assert detail["job"]["billed_chars"] == detail["job"]["chars"] > 0
        assert [s["id"] for s in detail["scripts"]] == ["prompt-1", "prompt-2", "prompt-3"]
        for script in detail["scripts"]:
            [output] = script["outputs"]
            audio = client.get(output["url"])
            assert audio.status_code == 200
            assert audio.headers["content-type"] == "audio/wav"
            assert audio.content[:4] == b"RIFF"
            assert hashlib.sha256(audio.content).hexdigest() == output["sha256"]
            assert len(audio.content) == output["bytes"]
        # The audio came from the release folder the job table names.
        assert (service.root / "out" / "clinic" / "releases" / job["id"]).is_dir()


def test_json_and_csv_bodies_are_manifests_too(service: Service) -> None:
    body = {
        "job": "json-job",
        "defaults": {"speaker": "cove", "modelId": "mistv2", "formats": ["wav"]},
        "scripts": [{"id": "hello", "text": "Hello from JSON."}],
    }
    csv = "id,text,speaker\nfirst,Hello from a spreadsheet.,cove\n"
    with service.client(service.token()) as client:
        as_json = client.post("/v1/jobs", json=body)
        assert as_json.status_code == 201, as_json.text
        as_csv = client.post(
            "/v1/jobs",
            params={"name": "prompts.csv"},
            content=csv,
            headers={"Content-Type": "text/csv"},
        )
        assert as_csv.status_code == 201, as_csv.text
        assert as_csv.json()["job"]["name"] == "prompts"
        for created in (as_json, as_csv):
            done = service.wait_for_job(client, created.json()["job"]["id"])
            assert done["job"]["state"] == "done", done


@pytest.mark.parametrize(
    ("name", "body", "where"),
    [
        (
            "clinic.yaml",
            "job: c\nscripts:\n  - id: a\n    text: Hi.\n"
            "  - id: b\n    text: Hello.\n    speed: 9\n",
            {"file": "clinic.yaml", "line": 7, "field": "scripts[1].speed"},
        ),
        (
            "clinic.json",
            '{"job": "c",\n "scripts": [\n  {"id": "a", "text": "Hi.",\n   "formats": ["flac"]}]}',
            {"file": "clinic.json", "line": 4, "field": "scripts[0].formats[0]"},
        ),
        (
            "prompts.csv",
            "id,text,speaker\na,Hello.,cove\nb,,cove\n",
            {"file": "prompts.csv", "line": 3, "row": 2},
        ),
        (
            "clinic.yaml",
            "scripts:\n  - id: a\n    text_file: ../../etc/passwd\n",
            {"file": "clinic.yaml", "line": 3, "field": "scripts[0].text_file"},
        ),
    ],
)
def test_a_manifest_error_is_a_422_naming_file_line_and_field(
    service: Service, name: str, body: str, where: dict[str, Any]
) -> None:
    with service.client(service.token()) as client:
        answer = post_manifest(client, body, name=name)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "manifest_invalid"
    assert {k: error.get(k) for k in where} == where
    # The message is the CLI's, with the file as the client named it: no server path in it.
    assert error["message"].startswith(f"{where['file']}:{where['line']}")
    assert str(service.root) not in answer.text
    assert jobs_in_table(service) == 0


def test_overrides_and_destinations_are_checked(service: Service, tmp_path: Path) -> None:
    manifest = write_manifest(service.root).read_bytes()
    with service.client(service.token()) as client:
        bad_set = post_manifest(client, manifest, set="speed=9")
        assert bad_set.status_code == 422
        assert bad_set.json()["error"]["code"] == "override_invalid"
        assert bad_set.json()["error"]["field"] == "set"
        outside = post_manifest(client, manifest, output=str(tmp_path / "elsewhere"))
        assert outside.status_code == 422
        assert outside.json()["error"] == {
            "code": "destination_refused",
            "message": outside.json()["error"]["message"],
            "field": "output",
        }
        bad_media = client.post("/v1/jobs", content=b"x", headers={"Content-Type": "image/png"})
        assert bad_media.status_code == 415
        huge = post_manifest(client, b"#" * (MAX_MANIFEST_BYTES + 1))
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
        bad_limit = client.get("/v1/jobs", params={"limit": 0})
        assert bad_limit.status_code == 422
        assert bad_limit.json()["error"]["field"] == "limit"
    assert jobs_in_table(service) == 0
    assert not (tmp_path / "elsewhere").exists()


def test_one_idempotency_key_makes_one_job_under_concurrent_posts(service: Service) -> None:
    manifest = write_manifest(service.root).read_bytes()
    token = service.token()
    answers: list[httpx.Response] = []
    start = threading.Barrier(4)

    def send() -> None:
        with service.client(token) as client:
            start.wait()
            answers.append(post_manifest(client, manifest, headers={"Idempotency-Key": "order-42"}))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201], [a.text for a in answers]
    assert len({a.json()["job"]["id"] for a in answers}) == 1
    assert jobs_in_table(service) == 1
    with service.client(token) as client:
        # A later retry gets the same job; the same key with another body is a client's bug.
        again = post_manifest(client, manifest, headers={"Idempotency-Key": "order-42"})
        assert again.status_code == 200
        assert again.json()["job"]["id"] == answers[0].json()["job"]["id"]
        other = post_manifest(
            client, manifest + b"\n# changed\n", headers={"Idempotency-Key": "order-42"}
        )
        assert other.status_code == 422
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        # Without a key the production is busy or done: a second job is a new release.
        service.wait_for_job(client, again.json()["job"]["id"])
    assert jobs_in_table(service) == 1


def test_outputs_are_served_only_from_the_job_table(service: Service) -> None:
    token = service.token()
    write_manifest(service.root, "a.yaml", job="a")
    write_manifest(service.root, "b.yaml", job="b", lines=3)
    (service.root / "secret.txt").write_text("not for clients")
    with service.client(token) as client:
        a = post_manifest(client, (service.root / "a.yaml").read_bytes(), name="a.yaml")
        b = post_manifest(client, (service.root / "b.yaml").read_bytes(), name="b.yaml")
        a_id, b_id = a.json()["job"]["id"], b.json()["job"]["id"]
        service.wait_for_job(client, a_id)
        service.wait_for_job(client, b_id)
        assert client.get(f"/v1/jobs/{a_id}/outputs/wav/prompt-1").status_code == 200
        refused = {
            # Another job's script: b has prompt-3, a does not.
            f"/v1/jobs/{a_id}/outputs/wav/prompt-3": 404,
            # A format the script was not encoded in.
            f"/v1/jobs/{a_id}/outputs/mp3/prompt-1": 404,
            f"/v1/jobs/{a_id}/outputs/wav/../../secret.txt": 404,
            f"/v1/jobs/{a_id}/outputs/wav/..%2F..%2F..%2Fsecret.txt": 404,
            f"/v1/jobs/{a_id}/outputs/wav/%2e%2e/%2e%2e/%2e%2e/secret.txt": 404,
            f"/v1/jobs/{a_id}/outputs/wav/releases/{b_id}/prompt-3.wav": 404,
            f"/v1/jobs/{a_id}/outputs/wav//etc/passwd": 404,
            "/v1/jobs/000000000000/outputs/wav/prompt-1": 404,
            f"/v1/jobs/{a_id}%2F..%2F{b_id}/outputs/wav/prompt-3": 404,
        }
        for url, status in refused.items():
            answer = client.get(httpx.URL(service.base_url + url))
            assert answer.status_code == status, (url, answer.status_code)
            assert "not for clients" not in answer.text and b"RIFF" not in answer.content[:4]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tail=st.text(alphabet=st.sampled_from("./%2e5cfF_-aA\\"), min_size=1, max_size=30))
def test_no_script_path_outside_the_table_is_served(
    served_job: tuple[Service, str, str], tail: str
) -> None:
    service, token, job_id = served_job
    if tail == "prompt-1":
        return
    with service.client(token) as client:
        answer = client.get(httpx.URL(f"{service.base_url}/v1/jobs/{job_id}/outputs/wav/{tail}"))
    assert answer.status_code in (404, 405), (tail, answer.status_code)
    assert b"RIFF" not in answer.content[:4]


@pytest.fixture
def served_job(service_factory: ServiceFactory, sqlite_url: str) -> tuple[Service, str, str]:
    service = service_factory(sqlite_url)
    token = service.token()
    write_manifest(service.root, lines=1)
    with service.client(token) as client:
        job_id = post_manifest(client, (service.root / "clinic.yaml").read_bytes()).json()["job"][
            "id"
        ]
        service.wait_for_job(client, job_id)
    return service, token, job_id


def test_rerender_one_script_with_another_voice_then_publish_and_roll_back(
    service: Service,
) -> None:
    manifest = write_manifest(service.root, lines=3)
    with service.client(service.token()) as client:
        first = post_manifest(client, manifest.read_bytes()).json()["job"]["id"]
        done = service.wait_for_job(client, first)
        one = next(s for s in done["scripts"] if s["id"] == "prompt-2")

        again = client.post(
            f"/v1/jobs/{first}/rerender",
            json={"scripts": ["prompt-2"], "set": ["speaker=marina"], "publish": "manual"},
        )
        assert again.status_code == 201, again.text
        second = again.json()["job"]["id"]
        redone = service.wait_for_job(client, second)
        assert redone["job"]["state"] == "done" and redone["job"]["published"] is False
        # Only the chosen script was synthesized again; the others came from the cache.
        assert redone["job"]["billed_chars"] == one["chars"]
        old = {s["id"]: s["outputs"][0]["sha256"] for s in done["scripts"]}
        new = {s["id"]: s["outputs"][0]["sha256"] for s in redone["scripts"]}
        assert new["prompt-1"] == old["prompt-1"] and new["prompt-3"] == old["prompt-3"]
        assert new["prompt-2"] != old["prompt-2"]

        unknown = client.post(f"/v1/jobs/{first}/rerender", json={"scripts": ["nope"]})
        assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "scripts"

        releases = client.get("/v1/productions/clinic/releases").json()
        assert [(r["job_id"], r["published"]) for r in releases["items"]] == [
            (second, False),
            (first, True),
        ]
        published = client.post("/v1/productions/clinic/publish", json={"release": second})
        assert published.status_code == 200, published.text
        assert published.json()["previous"] == first
        stable = (service.root / "out" / "clinic" / "prompt-2.wav").read_bytes()
        assert hashlib.sha256(stable).hexdigest() == new["prompt-2"]

        back = client.post("/v1/productions/clinic/rollback", json={})
        assert back.status_code == 200 and back.json()["release"] == first
        stable = (service.root / "out" / "clinic" / "prompt-2.wav").read_bytes()
        assert hashlib.sha256(stable).hexdigest() == old["prompt-2"]
        page = client.get("/v1/productions/clinic/releases", params={"limit": 1}).json()
        assert len(page["items"]) == 1 and page["next_offset"] == 1
        assert client.get("/v1/productions/nobody/releases").status_code == 422


def test_cancel_resume_pagination_and_deliveries(
    service_factory: ServiceFactory, database_url: str, engine_factory: Callable[..., RunningEngine]
) -> None:
    slow = engine_factory(ttfb_ms=400)
    service = service_factory(database_url, RIME_API_URL=slow.http_url, RIME_BATCH_CONCURRENCY="1")
    with service.client(service.token()) as client:
        ids = []
        for n in range(3):
            write_manifest(service.root, f"m{n}.yaml", job=f"m{n}", lines=4)
            created = post_manifest(
                client, (service.root / f"m{n}.yaml").read_bytes(), name=f"m{n}.yaml"
            )
            ids.append(created.json()["job"]["id"])
        cancelled = client.post(f"/v1/jobs/{ids[2]}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        resumed = client.post(f"/v1/jobs/{ids[2]}/resume")
        assert resumed.status_code == 200, resumed.text
        for job_id in ids:
            assert service.wait_for_job(client, job_id)["job"]["state"] == "done"
        first = client.get("/v1/jobs", params={"limit": 2}).json()
        rest = client.get("/v1/jobs", params={"limit": 2, "offset": first["next_offset"]}).json()
        assert first["next_offset"] == 2 and rest["next_offset"] is None
        assert [j["id"] for j in first["items"] + rest["items"]] == ids[::-1]
        assert client.get("/v1/jobs", params={"state": "cancelled"}).json()["items"] == []
        assert client.get(f"/v1/jobs/{ids[0]}/deliveries").json() == {"items": []}
        assert client.get("/v1/jobs/ffffffffffff").json()["error"]["code"] == "not_found"


def test_schedules_crud(service: Service) -> None:
    write_manifest(service.root)
    with service.client(service.token()) as client:
        made = client.post(
            "/v1/schedules",
            json={"name": "nightly", "manifest": "clinic.yaml", "cron": "0 2 * * *"},
        )
        assert made.status_code == 201, made.text
        assert made.json()["manifest"] == "clinic.yaml" and made.json()["last_run"] is None
        assert client.get("/v1/schedules/nightly").json()["cron"] == "0 2 * * *"
        assert [s["name"] for s in client.get("/v1/schedules").json()["items"]] == ["nightly"]
        twice = client.post(
            "/v1/schedules",
            json={"name": "nightly", "manifest": "clinic.yaml", "cron": "0 2 * * *"},
        )
        assert twice.status_code == 409 and twice.json()["error"]["code"] == "schedule_exists"
        for manifest in ("../clinic.yaml", "/etc/passwd"):
            outside = client.post(
                "/v1/schedules", json={"name": "x", "manifest": manifest, "cron": "@daily"}
            )
            assert outside.status_code == 422, manifest
        bad_cron = client.post(
            "/v1/schedules", json={"name": "y", "manifest": "clinic.yaml", "cron": "nope"}
        )
        assert bad_cron.status_code == 422 and "--cron" in bad_cron.json()["error"]["message"]
        # Update: the whole schedule again under its name; checked as a new one is.
        changed = client.put(
            "/v1/schedules/nightly",
            json={
                "name": "nightly",
                "manifest": "clinic.yaml",
                "cron": "30 4 * * 1-5",
                "only_if_changed": True,
                "set": ["speaker=marsh"],
            },
        )
        assert changed.status_code == 200, changed.text
        got = client.get("/v1/schedules/nightly").json()
        assert (got["cron"], got["only_if_changed"]) == ("30 4 * * 1-5", True)
        assert [s["name"] for s in client.get("/v1/schedules").json()["items"]] == ["nightly"]
        for path, body, code in (
            (
                "/v1/schedules/nightly",
                {"name": "nightly", "manifest": "clinic.yaml", "cron": "nope"},
                422,
            ),
            (
                "/v1/schedules/nightly",
                {"name": "other", "manifest": "clinic.yaml", "cron": "@daily"},
                422,
            ),
            (
                "/v1/schedules/absent",
                {"name": "absent", "manifest": "clinic.yaml", "cron": "@daily"},
                404,
            ),
        ):
            refused = client.put(path, json=body)
            assert refused.status_code == code, (body, refused.text)
        assert client.get("/v1/schedules/nightly").json()["cron"] == "30 4 * * 1-5"
        assert client.delete("/v1/schedules/nightly").status_code == 204
        assert client.get("/v1/schedules/nightly").status_code == 404


def test_health_ready_metrics_and_schema(service: Service) -> None:
    write_manifest(service.root)
    with service.client(service.token()) as client:
        job_id = post_manifest(client, (service.root / "clinic.yaml").read_bytes()).json()["job"][
            "id"
        ]
        service.wait_for_job(client, job_id)
        assert client.get("/health").json()["executor"] == "embedded"
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        text = client.get("/metrics").text
        assert 'rime_batch_jobs{state="done"} 1.0' in text
        assert "rime_batch_segments_synthesized_total 2.0" in text
        assert "rime_batch_queue_depth 0.0" in text
        billed = client.get(f"/v1/jobs/{job_id}").json()["job"]["billed_chars"]
        assert f"rime_batch_characters_billed_total {float(billed)}" in text
        assert (
            'rime_batch_http_request_duration_seconds_count{method="GET",route="/v1/jobs/{job_id}"'
            in text
        )
        schema = client.get("/v1/openapi.json").json()
        assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/schedules", "/metrics"} <= set(
            schema["paths"]
        )


def test_the_api_key_never_appears_in_a_response_or_a_log(
    service_factory: ServiceFactory,
    sqlite_url: str,
    engine_factory: Callable[..., RunningEngine],
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "rk_live_" + "Zq7" * 12
    guarded = engine_factory(api_keys=[key])
    caplog.set_level(logging.DEBUG)
    service = service_factory(sqlite_url, RIME_API_URL=guarded.http_url, RIME_API_KEY=key)
    seen: list[str] = []
    with service.client(service.token()) as client:
        write_manifest(service.root)
        created = post_manifest(client, (service.root / "clinic.yaml").read_bytes())
        job_id = created.json()["job"]["id"]
        detail = service.wait_for_job(client, job_id)
        assert detail["job"]["state"] == "done"  # the key reached Rime, and worked
        bad = post_manifest(client, "scripts: [", name="bad.yaml")
        for answer in (
            created,
            bad,
            client.get(f"/v1/jobs/{job_id}"),
            client.get("/v1/jobs"),
            client.get("/ready"),
            client.get("/metrics"),
            client.get("/v1/openapi.json"),
            client.get("/health"),
        ):
            seen.append(answer.text + json.dumps(dict(answer.headers)))
    logs = caplog.text
    assert "POST /v1/jobs 201" in logs  # the service's own lines were captured
    assert key not in "".join(seen) and key not in logs


def test_an_s3_output_is_a_redirect_to_a_presigned_url(
    service_factory: ServiceFactory, sqlite_url: str, s3: S3Env
) -> None:
    bucket = s3.bucket()
    service = service_factory(sqlite_url)
    write_manifest(service.root)
    with service.client(service.token()) as client:
        created = post_manifest(
            client, (service.root / "clinic.yaml").read_bytes(), output=s3.uri(bucket, "ivr")
        )
        assert created.status_code == 201, created.text
        detail = service.wait_for_job(client, created.json()["job"]["id"])
        assert detail["job"]["state"] == "done", detail
        [output] = detail["scripts"][0]["outputs"]
        answer = client.get(output["url"])
        assert answer.status_code == 307
        location = answer.headers["location"]
        assert location.startswith(s3.endpoint_url) and "Signature" in location
    # Fetched without the service's token: the presigned URL is the grant.
    audio = httpx.get(location)
    assert audio.status_code == 200
    assert hashlib.sha256(audio.content).hexdigest() == output["sha256"]
