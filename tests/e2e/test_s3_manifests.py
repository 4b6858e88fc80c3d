"""Manifests at s3:// URIs, over a real S3-protocol server on loopback: `plan` and `render` read
the manifest and the files it names under its own prefix; a schedule reads the object again at
every run, so only-if-changed sees an edit made in S3; every refusal names the URI in one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.manifest.models import MAX_TEXT_FILE_BYTES
from pipeline.store import create_engine_for
from rime_local.server import RunningEngine
from tests.e2e.test_render import KEY, segment_rows
from tests.e2e.test_schedules import one_line_refusal, schedule_rows
from tests.fixtures.cli import Cli
from tests.fixtures.s3 import DenyingS3, S3Env
from tests.fixtures.services import closed_port

EngineFactory = Callable[..., RunningEngine]
PREFIX = "shows/april"
WELCOME = "Thank you for calling the Riverside clinic."
MANIFEST = """\
output: out
defaults:
  speaker: cove
  modelId: mistv2
  samplingRate: 8000
  formats: [wav]
scripts_csv: prompts.csv
"""
PROMPTS = "id,text,text_file\nwelcome,,texts/welcome.txt\nhold,Please hold.,\n"


def put(s3: S3Env, bucket: str, key: str, body: str | bytes) -> None:
    """One object, written as a user's sync would."""
    data = body.encode() if isinstance(body, str) else body
    s3.client.put_object(Bucket=bucket, Key=key, Body=data)


def get_json(s3: S3Env, bucket: str, key: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(s3.client.get_object(Bucket=bucket, Key=key)["Body"].read())
    return found


def keys_under(s3: S3Env, bucket: str, prefix: str) -> set[str]:
    listed = s3.client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for o in listed.get("Contents", [])}


def show(s3: S3Env, bucket: str, manifest: str = MANIFEST) -> str:
    """The manifest, its CSV and the CSV's text file under PREFIX; the manifest's URI."""
    put(s3, bucket, f"{PREFIX}/jobs.yaml", manifest)
    put(s3, bucket, f"{PREFIX}/prompts.csv", PROMPTS)
    put(s3, bucket, f"{PREFIX}/texts/welcome.txt", WELCOME + "\n")
    return f"s3://{bucket}/{PREFIX}/jobs.yaml"


def jobs_rows(database_url: str) -> list[tuple[str, str, str]]:
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, name, manifest FROM jobs ORDER BY created_at"))
            return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]
    except sa.exc.OperationalError:
        return []  # no job table yet
    finally:
        engine.dispose()


def test_an_s3_manifest_plans_and_renders_with_its_csv_and_text_file_beside_it(
    cli: Cli, engine_factory: EngineFactory, s3: S3Env, s3_bucket: str
) -> None:
    uri = show(s3, s3_bucket)
    run = cli.using(engine=engine_factory(api_keys=[KEY]), api_key=KEY)

    planned = run.run("plan", uri)

    assert planned.returncode == 0, planned
    # A relative output is under the manifest's own prefix; the job is named by its stem.
    destination = f"s3://{s3_bucket}/{PREFIX}/out"
    assert f"jobs -> {destination}" in planned.stdout, planned
    assert "welcome" in planned.stdout and "hold" in planned.stdout, planned
    assert f"{len(WELCOME) + len('Please hold.'):,}" in planned.stdout, planned

    rendered = run.run("render", uri)

    assert rendered.returncode == 0, rendered
    [(job_id, name, manifest)] = jobs_rows(run.database_url)
    assert (name, manifest) == ("jobs", uri)
    # The welcome prompt is the text file's text, as the CSV's row named it.
    assert sum(int(r["chars"]) for r in segment_rows(run.database_url, job_id)) == len(
        WELCOME
    ) + len("Please hold.")
    out = f"{PREFIX}/out/"
    assert {f"{out}welcome.wav", f"{out}hold.wav", f"{out}results.json"} <= keys_under(
        s3, s3_bucket, out
    )
    results = get_json(s3, s3_bucket, f"{out}results.json")
    assert (results["manifest"], results["release"], results["state"]) == (uri, job_id, "done")
    # Nothing but the outputs was written: the manifest's folder is read, never copied.
    assert keys_under(s3, s3_bucket, PREFIX) - keys_under(s3, s3_bucket, out) == {
        f"{PREFIX}/jobs.yaml",
        f"{PREFIX}/prompts.csv",
        f"{PREFIX}/texts/welcome.txt",
    }


def test_a_schedule_of_an_s3_manifest_submits_only_after_the_object_is_edited(
    cli: Cli, engine_factory: EngineFactory, s3: S3Env, s3_bucket: str
) -> None:
    uri = show(s3, s3_bucket)
    run = cli.using(engine=engine_factory(api_keys=[KEY]), api_key=KEY)
    added = run.run("schedule", "add", "april", uri, "--cron", "0 2 * * *", "--only-if-changed")
    assert added.returncode == 0, added
    assert f"schedule april: {uri} at" in added.stdout, added
    listed = run.run("schedule", "list")
    assert uri in listed.stdout, listed

    first = run.run("schedule", "run", "april", "--here")
    unchanged = run.run("schedule", "run", "april", "--here")

    assert first.returncode == 0 and "(done)" in first.stdout, first
    assert unchanged.returncode == 0, unchanged
    assert "unchanged, nothing submitted" in unchanged.stdout, unchanged
    published = get_json(s3, s3_bucket, f"{PREFIX}/out/results.json")["release"]

    # The text file beside the manifest is edited in S3: the next run reads it and renders.
    put(s3, s3_bucket, f"{PREFIX}/texts/welcome.txt", "Thank you for calling. We are open.")
    edited = run.run("schedule", "run", "april", "--here")

    assert edited.returncode == 0 and "(done)" in edited.stdout, edited
    assert [r["outcome"] for r in schedule_rows(run.database_url)] == [
        "submitted",
        "unchanged",
        "submitted",
    ]
    jobs = jobs_rows(run.database_url)
    assert [manifest for _, _, manifest in jobs] == [uri, uri]
    assert get_json(s3, s3_bucket, f"{PREFIX}/out/results.json")["release"] == jobs[1][0]
    assert jobs[1][0] != published

    # So is the manifest itself: an edit to the object is seen at the next run, too.
    put(
        s3,
        s3_bucket,
        f"{PREFIX}/jobs.yaml",
        MANIFEST.replace("samplingRate: 8000", "samplingRate: 16000"),
    )
    again = run.run("schedule", "run", "april", "--here")
    assert again.returncode == 0 and "(done)" in again.stdout, again
    assert len(jobs_rows(run.database_url)) == 3


BAD_YAML = "scripts:\n  - id: one\n    text: Hello.\n  - id: [two\n    text: Bye.\n"


@pytest.mark.parametrize(
    ("objects", "manifest", "needle"),
    [
        pytest.param({}, "absent.yaml", "{uri}: the object does not exist", id="missing object"),
        pytest.param(
            {"jobs.yaml": "scripts:\n  - id: one\n    text_file: ../secret.txt\n"},
            "jobs.yaml",
            "{uri}:3: scripts[0].text_file: '../secret.txt' points outside the manifest's folder",
            id="escape",
        ),
        pytest.param(
            {"bad.yaml": BAD_YAML}, "bad.yaml", "{uri}:5: YAML syntax error", id="bad yaml"
        ),
        pytest.param(
            {"jobs.yaml": "scripts:\n  - id: one\n    text_file: texts/none.txt\n"},
            "jobs.yaml",
            "{uri}:3: scripts[0].text_file: 'texts/none.txt' does not exist",
            id="missing text file",
        ),
        pytest.param(
            {
                "jobs.yaml": "scripts:\n  - id: one\n    text_file: big.txt\n",
                "big.txt": b"a" * (MAX_TEXT_FILE_BYTES + 1),
            },
            "jobs.yaml",
            f"'big.txt' is {MAX_TEXT_FILE_BYTES + 1:,} bytes; a text file may hold at most",
            id="too big",
        ),
        pytest.param(
            {"jobs.yaml": "scripts_csv: rows.csv\n", "rows.csv": "id,text\none,Hi.\ntwo\n"},
            "jobs.yaml",
            "{base}/rows.csv:3: row 2: the row has 1 cells",
            id="csv beside it",
        ),
        pytest.param(
            {"jobs.yaml": "output: ../../..\nscripts:\n  - id: one\n    text: Hi.\n"},
            "jobs.yaml",
            "{uri}:1: output: '../../..' points above the root of bucket",
            id="output above the bucket",
        ),
    ],
)
def test_a_refused_s3_manifest_is_named_by_its_uri_in_one_line(
    cli: Cli,
    s3: S3Env,
    s3_bucket: str,
    objects: dict[str, str | bytes],
    manifest: str,
    needle: str,
) -> None:
    put(s3, s3_bucket, "shows/secret.txt", "Not for this manifest.")
    for name, body in objects.items():
        put(s3, s3_bucket, f"{PREFIX}/{name}", body)
    base = f"s3://{s3_bucket}/{PREFIX}"
    uri = f"{base}/{manifest}"

    for command in ("plan", "render", "diff", "submit"):
        refused = cli.run(command, uri)

        one_line_refusal(refused, needle.format(uri=uri, base=base))
        assert refused.returncode == 2, refused
        assert str(cli.cwd) not in refused.output, refused  # no temporary path either
    assert jobs_rows(cli.database_url) == []


def test_s3_that_cannot_be_read_is_one_line_naming_the_object(
    cli: Cli, s3: S3Env, s3_bucket: str, denying_s3: DenyingS3
) -> None:
    uri = show(s3, s3_bucket)

    missing = cli.run("plan", f"s3://no-such-bucket-{s3_bucket}/jobs.yaml")
    with closed_port() as port:
        unreachable = cli.using(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}",
            AWS_MAX_ATTEMPTS="1",
        ).run("render", uri)
    denied = cli.using(
        AWS_ENDPOINT_URL=denying_s3.endpoint_url,
        AWS_ENDPOINT_URL_S3=denying_s3.endpoint_url,
        AWS_ACCESS_KEY_ID=denying_s3.access_key_id,
        AWS_SECRET_ACCESS_KEY=denying_s3.secret_access_key,
    ).run("schedule", "add", "april", f"s3://{denying_s3.bucket}/jobs.yaml", "--cron", "@daily")

    one_line_refusal(
        missing,
        f"cannot download s3://no-such-bucket-{s3_bucket}/jobs.yaml: bucket "
        f"'no-such-bucket-{s3_bucket}' does not exist",
    )
    one_line_refusal(unreachable, f"cannot download {uri}: Could not connect")
    one_line_refusal(denied, f"cannot download s3://{denying_s3.bucket}/jobs.yaml: AccessDenied")
    for result in (missing, unreachable, denied):
        assert result.returncode == 1, result
        assert denying_s3.secret_access_key not in result.output
    assert schedule_rows(cli.database_url) == []
