"""Who may call what, over a real server on loopback: every route of the app, generated from
its route list, refuses a missing or wrong token, and read-only tokens where it changes
things; the console's session cookie and CSRF; tokens stored only as hashes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute

from pipeline.store.schema import API_TOKENS
from service.app import PUBLIC_PATHS, routes_of
from service.auth import poster, writer
from service.console import console_caller
from tests.fixtures.cli import Cli
from tests.fixtures.service import Service, write_manifest

ServiceFactory = Callable[..., Service]
READS = {"GET", "HEAD"}
# Routes that change only the caller's own session: any live token may post them.
SESSION_ONLY = {("POST", "/logout")}


def _routes(service: Service) -> list[tuple[str, str, APIRoute]]:
    found = []
    for route in routes_of(service.app):
        for method in sorted(route.methods):
            found.append((method, route.path, route))
    assert len(found) > 20, found  # the whole app, not a part of it
    return found


def _depends_on(route: APIRoute, wanted: object) -> bool:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if dep.call is wanted:
            return True
        stack.extend(dep.dependencies)
    return False


def _url(path: str, job_id: str) -> str:
    values = {"job_id": job_id, "script_id": "prompt-1", "fmt": "wav", "name": "clinic"}
    return re.sub(r"{(\w+)(?::\w+)?}", lambda m: values[m.group(1)], path)


def _job(service: Service, token: str) -> str:
    write_manifest(service.root)
    with service.client(token) as client:
        created = client.post(
            "/v1/jobs?name=clinic.yaml",
            content=(service.root / "clinic.yaml").read_bytes(),
            headers={"Content-Type": "application/yaml"},
        )
        assert created.status_code == 201, created.text
        job_id: str = created.json()["job"]["id"]
        service.wait_for_job(client, job_id)
    return job_id


@pytest.fixture
def service(service_factory: ServiceFactory, database_url: str) -> Service:
    return service_factory(database_url)


def test_every_route_refuses_a_missing_or_wrong_token(service: Service) -> None:
    token = service.token()
    job_id = _job(service, token)
    refused = []
    with service.client() as anonymous, service.client("rbt_" + "x" * 43) as wrong:
        for method, path, route in _routes(service):
            if path in PUBLIC_PATHS:
                continue
            url = _url(path, job_id)
            for who, client in (("no token", anonymous), ("a wrong token", wrong)):
                answer = client.request(method, url, json={})
                if _depends_on(route, console_caller):
                    # A console page sends the browser to sign in instead.
                    if answer.status_code != 303 or answer.headers["location"] != "/login":
                        refused.append(f"{method} {path} with {who}: {answer.status_code}")
                elif answer.status_code != 401 or answer.json()["error"]["code"] != "unauthorized":
                    refused.append(f"{method} {path} with {who}: {answer.status_code}")
    assert refused == []
    # A malformed header is refused as well, not taken for no header.
    with service.client() as client:
        answer = client.get("/v1/jobs", headers={"Authorization": f"Basic {token}"})
    assert answer.status_code == 401


def test_only_health_and_the_login_form_are_public(service: Service) -> None:
    assert {"/health", "/login"} == PUBLIC_PATHS
    with service.client() as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/login").status_code == 200
        # The schema, readiness and metrics are behind a token too.
        for path in ("/v1/openapi.json", "/ready", "/metrics"):
            assert client.get(path).status_code == 401, path


def test_read_only_tokens_read_and_change_nothing(service: Service) -> None:
    job_id = _job(service, service.token())
    reader = service.token(read_only=True)
    wrong = []
    with service.client(reader) as client:
        for method, path, route in _routes(service):
            if path in PUBLIC_PATHS:
                continue
            changes = method not in READS
            if changes and (method, path) not in SESSION_ONLY:
                # Declared on the route itself, so a new route cannot forget it.
                if not _depends_on(route, writer):
                    wrong.append(f"{method} {path} does not depend on writer")
                answer = client.request(method, _url(path, job_id), json={})
                if answer.status_code != 403 or answer.json()["error"]["code"] != "forbidden":
                    wrong.append(f"{method} {path}: {answer.status_code} {answer.text[:80]}")
            elif changes:
                assert _depends_on(route, poster), path
            else:
                answer = client.request(method, _url(path, job_id))
                if answer.status_code in (401, 403):
                    wrong.append(f"{method} {path} refused a read: {answer.status_code}")
        state = client.get(f"/v1/jobs/{job_id}").json()["job"]
    assert wrong == []
    assert state["state"] == "done" and state["published"] is True
    with service.client(reader) as client:
        listed = client.get("/v1/jobs").json()["items"]
    assert [j["id"] for j in listed] == [job_id]  # nothing was created


def test_a_revoked_token_is_refused(service: Service, tmp_path: Path) -> None:
    from pipeline.reach import open_job_table
    from service.tokens import revoke_token

    token = service.token()
    with service.client(token) as client:
        assert client.get("/v1/jobs").status_code == 200
        db = open_job_table(service.database_url)
        with db.begin() as conn:
            name = conn.scalar(
                sa.select(API_TOKENS.c.name).where(
                    API_TOKENS.c.token_hash == hashlib.sha256(token.encode()).hexdigest()
                )
            )
            assert name is not None
            revoke_token(conn, name)
        db.dispose()
        assert client.get("/v1/jobs").status_code == 401


def test_only_the_token_hash_is_stored(service: Service) -> None:
    from pipeline.reach import open_job_table

    token = service.token()
    db = open_job_table(service.database_url)
    try:
        with db.begin() as conn:
            rows = [tuple(str(v) for v in row) for row in conn.execute(sa.select(API_TOKENS))]
    finally:
        db.dispose()
    stored = " ".join(" ".join(row) for row in rows)
    assert token not in stored and token[4:] not in stored
    assert hashlib.sha256(token.encode()).hexdigest() in stored


def _login(client: httpx.Client, token: str) -> httpx.Response:
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf, form.text
    return client.post("/login", data={"token": token, "csrf_token": csrf.group(1)})


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def test_console_session_cookie_and_csrf(service: Service) -> None:
    token = service.token()
    job_id = _job(service, token)
    with service.client() as browser:
        # No session: the console sends the browser to the login page.
        assert browser.get("/").headers["location"] == "/login"
        # A login form's token from elsewhere (another site's form) does not log in.
        browser.get("/login")
        forged = browser.post("/login", data={"token": token, "csrf_token": "x" * 64})
        assert forged.status_code == 403 and "rb_session" not in forged.cookies
        assert _login(browser, "rbt_" + "y" * 43).status_code == 401

        signed_in = _login(browser, token)
        assert signed_in.status_code == 303
        cookie = signed_in.headers["set-cookie"]
        assert "rb_session=" in cookie
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert token not in cookie
        home = browser.get("/")
        assert home.status_code == 200 and "Sign out" in home.text
        csrf = _csrf(home.text)

        # The cookie reads the API; a state change needs the session's CSRF token.
        assert browser.get(f"/v1/jobs/{job_id}").status_code == 200
        refused = browser.post(f"/v1/jobs/{job_id}/cancel")
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
        wrong = browser.post(f"/v1/jobs/{job_id}/cancel", headers={"X-CSRF-Token": "0" * 64})
        assert wrong.status_code == 403
        allowed = browser.post(f"/v1/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf})
        # Past auth: a done job cannot be cancelled, and says so in the API's own shape.
        assert allowed.status_code == 409, allowed.text
        assert allowed.json()["error"]["code"] == "illegal_transition"

        assert browser.post("/logout").status_code == 403
        out = browser.post("/logout", data={"csrf_token": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert browser.get("/").status_code == 303
        assert browser.get("/v1/jobs").status_code == 401


def test_a_forged_session_cookie_is_refused(service: Service) -> None:
    with service.client() as browser:
        browser.cookies.set("rb_session", "1.9999999999.deadbeef")
        assert browser.get("/v1/jobs").status_code == 401


def test_token_commands_print_a_token_once(cli: Cli) -> None:
    created = cli.run("token", "create", "ci", "--read-only")
    assert created.returncode == 0, created
    [token] = created.stdout.split()
    assert token.startswith("rbt_") and len(token) > 40
    listed = cli.run("token", "list")
    assert "ci  read-only" in listed.stdout and token not in listed.output
    assert cli.run("token", "create", "ci").returncode == 2
    assert cli.run("token", "revoke", "ci").returncode == 0
    assert "revoked" in cli.run("token", "list").stdout
    again = cli.run("token", "revoke", "ci")
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again


def test_serve_binds_loopback_unless_told(cli: Cli) -> None:
    refused = cli.run("serve", "--host", "0.0.0.0", "--port", "1")
    assert refused.returncode == 2, refused
    assert "--public" in refused.stderr and "Traceback" not in refused.output
