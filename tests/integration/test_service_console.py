"""The console's pages over a real server (httpx as the browser): a read-only session sees no
write control and is refused by the server anyway; every form post needs the session's CSRF
token; a bad manifest or edit comes back on the page, naming file, line and field; neither
the Rime API key nor a token is ever in a page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from rime_local.server import RunningEngine
from tests.fixtures.s3 import S3Env
from tests.fixtures.service import Service, write_manifest

ServiceFactory = Callable[..., Service]


@pytest.fixture
def service(service_factory: ServiceFactory, sqlite_url: str) -> Service:
    return service_factory(sqlite_url)


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


@contextmanager
def _signed_in(service: Service, token: str) -> Iterator[httpx.Client]:
    with service.client() as browser:
        _sign_in(browser, token)
        yield browser


def _sign_in(browser: httpx.Client, token: str) -> None:
    form = browser.get("/login")
    answer = browser.post("/login", data={"token": token, "csrf_token": _csrf(form.text)})
    assert answer.status_code == 303


def _done_job(service: Service, token: str) -> str:
    manifest = write_manifest(service.root, lines=2)
    with service.client(token) as client:
        created = client.post(
            "/v1/jobs?name=clinic.yaml",
            content=manifest.read_bytes(),
            headers={"Content-Type": "application/yaml"},
        )
        job_id: str = created.json()["job"]["id"]
        service.wait_for_job(client, job_id)
    return job_id


def test_a_read_only_session_sees_no_write_control_and_is_refused(service: Service) -> None:
    writer = service.token()
    job_id = _done_job(service, writer)
    with _signed_in(service, service.token(read_only=True)) as browser:
        pages = [browser.get(p) for p in ("/", f"/jobs/{job_id}", "/schedules")]
        pages.append(browser.get(f"/jobs/{job_id}/edit/prompt-1"))
        for page in pages:
            assert page.status_code == 200
            # The sign-out form is the only form.
            assert re.findall(r'<form method="post" action="([^"]+)"', page.text) == ["/logout"]
        assert "Please hold." in pages[3].text and "read-only" in pages[3].text
        csrf = _csrf(pages[1].text)
        for path, data in (
            (f"/jobs/{job_id}/publish", {}),
            (f"/jobs/{job_id}/edit/prompt-1", {"speaker": "marsh", "text": "Hi."}),
            ("/jobs", {"text": "job: x"}),
            ("/schedules", {"name": "n", "manifest": "clinic.yaml", "cron": "@daily"}),
        ):
            refused = browser.post(path, data={"csrf_token": csrf, **data})
            assert refused.status_code == 403, (path, refused.text)
            assert refused.json()["error"]["code"] == "forbidden"
    with service.client(writer) as client:
        assert len(client.get("/v1/jobs").json()["items"]) == 1  # nothing was made


def test_every_console_form_needs_the_session_csrf_token(service: Service) -> None:
    token = service.token()
    job_id = _done_job(service, token)
    with _signed_in(service, token) as browser:
        page = browser.get(f"/jobs/{job_id}")
        actions = set(re.findall(r'<form method="post" action="([^"]+)"', page.text))
        edit = browser.get(f"/jobs/{job_id}/edit/prompt-1")
        actions |= set(re.findall(r'<form method="post" action="([^"]+)"', edit.text))
        assert f"/jobs/{job_id}/edit/prompt-1" in actions and "/logout" in actions
        for action in sorted(actions):
            refused = browser.post(action, data={"csrf_token": "0" * 64})
            assert refused.status_code == 403, action
        # Each form on the page carries the token.
        assert page.text.count('name="csrf_token"') == page.text.count('<form method="post"')


def test_a_bad_manifest_or_edit_is_shown_on_its_page(service: Service) -> None:
    token = service.token()
    job_id = _done_job(service, token)
    with _signed_in(service, token) as browser:
        csrf = _csrf(browser.get("/").text)
        bad = "job: clinic\nscripts:\n  - id: a\n    text: Hi.\n    speed: 9\n"
        answer = browser.post(
            "/jobs", data={"csrf_token": csrf, "text": bad, "name": "clinic.yaml"}
        )
        assert answer.status_code == 422
        assert "clinic.yaml:5" in answer.text and "scripts[0].speed" in answer.text
        assert "speed: 9" in answer.text  # the pasted manifest is kept in the form

        edited = browser.post(
            f"/jobs/{job_id}/edit/prompt-1",
            data={"csrf_token": csrf, "speaker": "s" * 101, "text": "Hello."},
        )
        assert edited.status_code == 422
        assert "edit.speaker" in edited.text and "prompt-1" in edited.text
        pages = [answer.text, edited.text, browser.get(f"/jobs/{job_id}").text]
    for text in pages:
        assert token not in text and token[4:] not in text
        assert "unused-key" not in text  # the Rime API key of the service's settings


def test_an_s3_job_s_takes_play_through_presigned_urls_and_have_strips(
    service_factory: ServiceFactory, sqlite_url: str, s3: S3Env
) -> None:
    bucket = s3.bucket()
    service = service_factory(sqlite_url)
    manifest = write_manifest(service.root)
    token = service.token()
    with service.client(token) as client:
        created = client.post(
            "/v1/jobs",
            params={"name": "clinic.yaml", "output": s3.uri(bucket, "ivr")},
            content=manifest.read_bytes(),
            headers={"Content-Type": "application/yaml"},
        )
        job_id = created.json()["job"]["id"]
        assert service.wait_for_job(client, job_id)["job"]["state"] == "done"
    with _signed_in(service, token) as browser:
        page = browser.get(f"/jobs/{job_id}").text
        sources = re.findall(r'<audio controls preload="metadata" src="([^"]+)"', page)
        assert sources == [f"/v1/jobs/{job_id}/outputs/wav/prompt-{i}" for i in (1, 2)]
        # Loudness and peak of each take, analysed from the bucket's objects.
        assert len(re.findall(r"LUFS, peak -[\d.]+ dBFS · <a", page)) == 2
        redirect = browser.get(sources[0])
        assert redirect.status_code == 307 and "Signature" in redirect.headers["location"]
        strip = browser.get(f"/jobs/{job_id}/strip/wav/prompt-1")
        assert strip.status_code == 200 and strip.headers["content-type"] == "image/svg+xml"
        assert strip.text.count("<rect") > 100
        gone = browser.get(f"/jobs/{job_id}/strip/wav/prompt-9")
        assert gone.status_code == 404


def test_schedules_are_added_and_deleted_from_the_console(service: Service) -> None:
    write_manifest(service.root)
    with _signed_in(service, service.token()) as browser:
        csrf = _csrf(browser.get("/schedules").text)
        form = {"csrf_token": csrf, "name": "nightly", "manifest": "clinic.yaml"}
        bad = browser.post("/schedules", data={**form, "cron": "61 * * * *"})
        assert bad.status_code == 422 and "cron" in bad.text
        assert 'value="nightly"' in bad.text  # the form keeps what was typed
        outside = browser.post("/schedules", data={**form, "cron": "@daily", "manifest": "../x"})
        assert outside.status_code == 422 and "outside the root" in outside.text
        added = browser.post("/schedules", data={**form, "cron": "0 6 * * *"})
        assert added.status_code == 303
        listed = browser.get(added.headers["location"])
        assert "Schedule added." in listed.text and "0 6 * * *" in listed.text
        assert browser.get("/v1/schedules/nightly").json()["cron"] == "0 6 * * *"
        gone = browser.post("/schedules/nightly/delete", data={"csrf_token": csrf})
        assert gone.status_code == 303
        assert browser.get("/v1/schedules").json()["items"] == []
        again = browser.post("/schedules/nightly/delete", data={"csrf_token": csrf})
        assert again.status_code == 404 and "nightly" in again.text


def test_publish_another_release_and_roll_back_from_the_releases_page(service: Service) -> None:
    token = service.token()
    first = _done_job(service, token)
    with service.client(token) as client:
        rerendered = client.post(
            f"/v1/jobs/{first}/rerender",
            json={"scripts": ["prompt-2"], "edits": [{"script": "prompt-2", "text": "Bye."}]},
        )
        assert rerendered.status_code == 201, rerendered.text
        second = rerendered.json()["job"]["id"]
        detail = service.wait_for_job(client, second)
    # The API's rerender takes the console's edits: only the edited script was sent again.
    scripts = {s["id"]: s for s in detail["scripts"]}
    assert scripts["prompt-2"]["chars"] == len("Bye.") == scripts["prompt-2"]["billed_chars"]
    assert scripts["prompt-1"]["billed_chars"] == 0
    with _signed_in(service, token) as browser:
        url = f"/releases?name=clinic&destination={service.root / 'out' / 'clinic'}"
        page = browser.get(url)
        assert page.status_code == 200 and "Roll back" in page.text
        assert f"Publish {first}" in page.text and f"Publish {second}" not in page.text
        rolled = browser.post(
            "/releases/rollback",
            data={
                "csrf_token": _csrf(page.text),
                "name": "clinic",
                "destination": str(service.root / "out" / "clinic"),
            },
        )
        assert rolled.status_code == 303
        assert "Rolled back" in browser.get(rolled.headers["location"]).text
        assert browser.get(f"/v1/jobs/{first}").json()["job"]["published"] is True
        # The job page of the release no longer published compares it with the published one.
        again = browser.get(f"/jobs/{second}").text
        assert f'Takes compared with release <a class="id" href="/jobs/{first}">' in again
        assert "Approve and publish this release" in again


def test_a_job_page_plays_captions_with_the_take_and_shows_the_recorded_loudness(
    service_factory: ServiceFactory, sqlite_url: str, engine: RunningEngine
) -> None:
    service = service_factory(sqlite_url, RIME_WS_URL=engine.ws_url)
    token = service.token()
    (service.root / "captioned.yaml").write_text(
        "job: captioned\noutput: out/captioned\n"
        "defaults: {speaker: cove, samplingRate: 24000, formats: [mp3, wav], "
        "captions: [srt, vtt], loudness_lufs: -18}\n"
        "scripts:\n  - id: lesson\n    text: Welcome to the course. <400> Today we begin.\n",
        encoding="utf-8",
    )
    with service.client(token) as client:
        created = client.post(
            "/v1/jobs?name=captioned.yaml",
            content=(service.root / "captioned.yaml").read_bytes(),
            headers={"Content-Type": "application/yaml"},
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job"]["id"]
        service.wait_for_job(client, job_id)
        recorded = client.get(f"/v1/jobs/{job_id}").json()
    with _signed_in(service, token) as browser:
        page = browser.get(f"/jobs/{job_id}").text
        players = re.findall(r"<audio [^>]*src=\"([^\"]+)\"[^>]*>(.*?)</audio>", page, re.S)
        # One player per audio format, each with the take's WebVTT as its captions track.
        assert sorted(src.split("/")[-2] for src, _ in players) == ["mp3", "wav"]
        vtt = f"/v1/jobs/{job_id}/outputs/vtt/lesson"
        for _, inner in players:
            assert f'<track kind="captions" src="{vtt}"' in inner
        assert f'href="/v1/jobs/{job_id}/outputs/srt/lesson"' in page
        assert browser.get(vtt).text.startswith("WEBVTT")
    script = recorded["scripts"][0]
    figure, farthest = script["loudness"]["integrated_lufs"], script["loudness"]["format"]
    assert abs(figure + 18) < 1.0
    assert f"{figure:.1f} LUFS ({farthest}, the farthest from it), target -18" in page
    # Each take shows what its own file measured as it was encoded.
    for output in script["outputs"]:
        if output["format"] in ("mp3", "wav"):
            assert f"{output['loudness']['integrated_lufs']:.1f} LUFS, true peak" in page


def test_a_schedule_of_an_s3_manifest_is_added_and_listed_by_its_uri(
    service_factory: ServiceFactory, sqlite_url: str, s3: S3Env
) -> None:
    bucket = s3.bucket()
    service = service_factory(sqlite_url)
    manifest = write_manifest(service.root, job="from-s3")
    s3.client.put_object(Bucket=bucket, Key="ivr/jobs.yaml", Body=manifest.read_bytes())
    uri = s3.uri(bucket, "ivr/jobs.yaml")
    token = service.token()
    with service.client(token) as client:
        added = client.post(
            "/v1/schedules",
            json={
                "name": "nightly",
                "manifest": uri,
                "cron": "0 2 * * *",
                "output": s3.uri(bucket, "out"),
            },
        )
        assert added.status_code == 201, added.text
        assert added.json()["manifest"] == uri
        assert [s["manifest"] for s in client.get("/v1/schedules").json()["items"]] == [uri]
    with _signed_in(service, token) as browser:
        assert uri in browser.get("/schedules").text
