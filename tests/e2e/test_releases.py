"""Re-renders as releases: a voice change killed halfway never shows on the stable paths, its
resume publishes the whole new set, a rollback brings the old one back, one production renders
at a time, an older job never overwrites a newer release, and old releases are pruned."""

from __future__ import annotations

import hashlib
import json
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipeline.store import create_engine_for
from rime_local.server import RunningEngine
from tests.e2e.test_render import KEY, write
from tests.fixtures.cli import Cli, CliResult, Running
from tests.fixtures.s3 import S3Env
from tests.fixtures.services import poll_until

EngineFactory = Callable[..., RunningEngine]
PROMPTS = 10
NAME = "ivr-prompts"


def manifest(folder: Path, speaker: str = "cove", *, extra: str = "") -> Path:
    """PROMPTS one-segment IVR prompts in `speaker`'s voice."""
    scripts = "".join(
        f"  - id: prompts/p{n:02d}\n    text: Prompt {n}. Please hold while we connect you.\n"
        for n in range(PROMPTS)
    )
    return write(
        folder,
        f"job: {NAME}\noutput: out\n{extra}defaults:\n  speaker: {speaker}\n  modelId: mistv2\n"
        f"  samplingRate: 8000\n  formats: [wav-mulaw]\nscripts:\n{scripts}",
    )


def published_set(out: Path) -> dict[str, bytes]:
    """The stable files and the root results.json: everything a phone system syncs."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.relative_to(out).parts[0] not in ("releases", "cache")
    }


def results(out: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((out / "results.json").read_text())
    return document


def done_segments(database_url: str, job_id: str) -> int:
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.scalar(
                    sa.text("SELECT COUNT(*) FROM segments WHERE job_id = :j AND state = 'done'"),
                    {"j": job_id},
                )
                or 0
            )
    finally:
        engine.dispose()


def job_ids(database_url: str) -> set[str]:
    """Every job in the test's job table (none before the first render creates it)."""
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            return {str(j) for j in conn.scalars(sa.text("SELECT id FROM jobs"))}
    except sa.exc.OperationalError:
        return set()
    finally:
        engine.dispose()


def job_of(running: Running, run: Cli, known: set[str]) -> str:
    """The id of the job a background render recorded: the one not among `known`."""
    found: list[str] = []

    def recorded() -> bool:
        assert running.proc.poll() is None, running.wait()
        found[:] = sorted(job_ids(run.database_url) - known)
        return bool(found)

    poll_until(recorded, 30, "the render to record its job", interval=0.1)
    assert len(found) == 1, found
    return found[0]


def assert_consistent(out: Path, release: str) -> None:
    """results.json names `release`, and every stable file is byte for byte its release file."""
    document = results(out)
    assert document["release"] == release
    for script in document["scripts"]:
        for output in script["outputs"]:
            released, stable = Path(output["uri"]), Path(output["published_uri"])
            assert released.parent.is_relative_to(out / "releases" / release), output
            assert stable.read_bytes() == released.read_bytes()
            assert hashlib.sha256(stable.read_bytes()).hexdigest() == output["sha256"]


def one_line_refusal(result: CliResult, *needles: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.output, result
    assert len(result.stderr.strip().splitlines()) == 1, result
    for needle in needles:
        assert needle in result.stderr, result


def test_a_voice_change_killed_halfway_leaves_the_published_set_and_its_resume_publishes_it(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    out = tmp_path / "out"
    first = run.run("render", manifest(tmp_path, "cove"))
    assert first.returncode == 0, first
    old_release = results(out)["release"]
    before = published_set(out)
    assert len(before) == PROMPTS + 1

    # The voice change, on a slow engine, killed once several prompts are done.
    engine.configure(ttfb_ms=300, pacing=2.0)
    known = job_ids(run.database_url)
    running = run.start("render", manifest(tmp_path, "marsh"), "--concurrency", "2")
    new_release = job_of(running, run, known)
    poll_until(
        lambda: done_segments(run.database_url, new_release) >= 3,
        60,
        "three prompts of the new voice",
        interval=0.1,
    )
    running.signal(signal.SIGKILL)
    running.wait()
    assert done_segments(run.database_url, new_release) < PROMPTS
    assert any((out / "releases" / new_release).rglob("*.wav")), "some new prompts were stitched"

    # Byte for byte what was published before, results.json included.
    assert published_set(out) == before

    engine.configure(ttfb_ms=0, pacing=0.0)
    resumed = run.run("resume", new_release)
    assert resumed.returncode == 0, resumed
    assert "published" in resumed.stdout
    assert_consistent(out, new_release)
    after = published_set(out)
    assert after.keys() == before.keys()
    changed = [key for key in before if key != "results.json" and after[key] != before[key]]
    assert len(changed) == PROMPTS  # every prompt in the new voice, none left in the old

    # A rollback brings back exactly the old set.
    rolled = run.run("rollback", NAME)
    assert rolled.returncode == 0, rolled
    assert f"published release {old_release}" in rolled.stdout
    assert_consistent(out, old_release)
    restored = published_set(out)
    assert {k: v for k, v in restored.items() if k != "results.json"} == {
        k: v for k, v in before.items() if k != "results.json"
    }

    statuses = run.run("status").stdout
    assert re.search(rf"{old_release}\s.*done\s.*published", statuses), statuses
    assert re.search(rf"{new_release}\s.*done\s+│\s+│", statuses), statuses

    listed = run.run("releases", NAME)
    assert listed.returncode == 0, listed
    assert old_release in listed.stdout and new_release in listed.stdout
    assert "marsh/mistv2" in listed.stdout and "cove/mistv2" in listed.stdout


def test_one_production_renders_at_a_time(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY], ttfb_ms=300, pacing=2.0)
    run = cli.using(engine=engine, api_key=KEY)
    path = manifest(tmp_path)
    running = run.start("render", path, "--concurrency", "2")
    first = job_of(running, run, set())
    # The second render talks to an engine of its own: what it sends is counted apart.
    other = engine_factory(api_keys=[KEY])

    second = cli.using(engine=other, api_key=KEY).run("render", path)

    one_line_refusal(second, "already being rendered", first, f"rime-batch cancel {first}")
    assert other.metrics()["requests"] == 0
    assert job_ids(run.database_url) == {first}
    finished = running.wait()
    assert finished.returncode == 0, finished
    assert_consistent(tmp_path / "out", first)


def test_an_older_job_never_overwrites_a_newer_release(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    out = tmp_path / "out"
    saved = run.run("plan", manifest(tmp_path, "cove"), "--save")
    assert saved.returncode == 0, saved
    older = saved.stdout.split("saved as job ")[1].split()[0]
    cancelled = run.run("cancel", older)
    assert cancelled.returncode == 0, cancelled

    newer = run.run("render", manifest(tmp_path, "marsh"))
    assert newer.returncode == 0, newer
    newer_release = results(out)["release"]
    before = published_set(out)

    resumed = run.run("resume", older)

    assert resumed.returncode == 0, resumed  # the job itself finishes...
    assert "not published" in resumed.stdout  # ...but its older release is not published
    assert published_set(out) == before
    assert results(out)["release"] == newer_release
    status = run.run("status", older)
    assert "older than the published release" in status.stdout, status
    # On purpose, it can be.
    assert run.run("rollback", NAME, older).returncode == 0
    assert_consistent(out, older)


def test_a_manual_release_waits_for_publish(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    out = tmp_path / "out"

    rendered = run.run("render", manifest(tmp_path), "--publish", "manual")

    assert rendered.returncode == 0, rendered
    release = rendered.stderr.split("job ")[1].split(":")[0]
    assert f"rime-batch publish {NAME} {release}" in rendered.stdout
    assert published_set(out) == {}
    assert (out / "releases" / release / "results.json").is_file()
    published = run.run("publish", NAME, release[:6])
    assert published.returncode == 0, published
    assert_consistent(out, release)
    assert len(published_set(out)) == PROMPTS + 1


def test_scripts_a_release_drops_leave_the_stable_paths(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    out = tmp_path / "out"
    assert run.run("render", manifest(tmp_path)).returncode == 0
    assert (out / "prompts" / "p09.mulaw.wav").is_file()
    shorter = manifest(tmp_path).read_text().split("  - id: prompts/p09")[0]
    write(tmp_path, shorter)

    assert run.run("render", tmp_path / "jobs.yaml").returncode == 0

    assert not (out / "prompts" / "p09.mulaw.wav").exists()
    assert len(published_set(out)) == PROMPTS  # nine prompts and results.json
    assert_consistent(out, results(out)["release"])


def test_old_releases_are_pruned_and_the_cache_follows(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    out = tmp_path / "out"
    voices = ["cove", "marsh", "bayou", "mesa", "lagoon"]
    releases = []
    for voice in voices:
        rendered = run.run("render", manifest(tmp_path, voice, extra="keep_releases: 3\n"))
        assert rendered.returncode == 0, rendered
        releases.append(results(out)["release"])

    kept = {p.name for p in (out / "releases").iterdir() if any(p.rglob("*.wav"))}
    assert kept == set(releases[-3:])
    refused = run.run("rollback", NAME, releases[0])
    one_line_refusal(refused, "pruned")

    cached = sorted((out / "cache").rglob("*.wav"))
    assert len(cached) == len(voices) * PROMPTS
    pruned = run.run("cache", "prune", NAME)
    assert pruned.returncode == 0, pruned
    assert f"freed {2 * PROMPTS} cached segments" in pruned.stdout, pruned
    assert len(list((out / "cache").rglob("*.wav"))) == 3 * PROMPTS
    # What is kept still renders from the cache: nothing is sent again for the newest voice.
    engine.reset_metrics()
    again = run.run("render", manifest(tmp_path, voices[-1], extra="keep_releases: 3\n"))
    assert again.returncode == 0, again
    assert engine.metrics()["requests"] == 0


def test_no_cache_synthesizes_everything_again(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    assert run.run("render", manifest(tmp_path)).returncode == 0
    engine.reset_metrics()
    assert run.run("render", manifest(tmp_path)).returncode == 0
    assert engine.metrics()["requests"] == 0

    fresh = run.run("render", manifest(tmp_path), "--no-cache")

    assert fresh.returncode == 0, fresh
    assert engine.metrics()["requests"] == PROMPTS + 1  # and the preflight of its one voice


def test_diff_says_what_changed_and_what_a_render_would_send(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY, RIME_BATCH_PRICE_PER_1K_CHARS="40")
    path = manifest(tmp_path)
    nothing_yet = run.run("diff", path)
    assert nothing_yet.returncode == 0, nothing_yet
    assert "nothing published yet" in nothing_yet.stdout
    assert f"to synthesize: {PROMPTS} of {PROMPTS} segments" in nothing_yet.stdout
    assert run.run("render", path).returncode == 0

    unchanged = run.run("diff", path)
    assert "0 added, 0 removed, 0 changed, 10 unchanged" in unchanged.stdout, unchanged
    assert f"to synthesize: 0 of {PROMPTS} segments, 0 characters" in unchanged.stdout

    edited = path.read_text().replace("Prompt 3. Please hold", "Prompt 3. Kindly hold")
    edited = edited.replace("  - id: prompts/p09", "  - id: prompts/p10")
    write(tmp_path, edited)
    engine.reset_metrics()
    changed = run.run("diff", path)
    assert changed.returncode == 0, changed
    out = changed.stdout
    assert "~ prompts/p03 (text)" in out and "+ prompts/p10" in out and "- prompts/p09" in out
    assert "1 added, 1 removed, 1 changed, 8 unchanged" in out
    # p03's new text is a miss; p10 says what p09 said, so its audio is cached.
    chars = len("Prompt 3. Kindly hold while we connect you.")
    assert f"to synthesize: 1 of {PROMPTS} segments, {chars} characters" in out
    assert f"about {chars / 1000 * 40:,.2f} at the configured price" in out
    assert engine.metrics()["requests"] == 0  # a diff sends nothing

    voice = run.run("diff", manifest(tmp_path, "marsh"))
    assert "~ prompts/p00 (voice)" in voice.stdout
    assert f"to synthesize: {PROMPTS} of {PROMPTS} segments" in voice.stdout
    # The same voice change asked for with a flag, as the README's walk-through does.
    flagged = run.run("diff", manifest(tmp_path), "--set", "speaker=marsh")
    assert flagged.returncode == 0, flagged
    assert flagged.stdout.count("(voice)") == PROMPTS
    assert f"to synthesize: {PROMPTS} of {PROMPTS} segments" in flagged.stdout
    assert engine.metrics()["requests"] == 0


def test_on_s3_results_json_is_the_pointer_and_rollback_restores_the_objects(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path, s3: S3Env, s3_bucket: str
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    destination = s3.uri(s3_bucket, "ivr")

    def objects() -> dict[str, bytes]:
        listed = s3.client.list_objects_v2(Bucket=s3_bucket, Prefix="ivr/")
        return {
            o["Key"]: s3.client.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read()
            for o in listed.get("Contents", [])
        }

    def stable(found: dict[str, bytes]) -> dict[str, bytes]:
        return {k: v for k, v in found.items() if not k.startswith(("ivr/releases/", "ivr/cache/"))}

    assert run.run("render", manifest(tmp_path, "cove"), "-o", destination).returncode == 0
    first = stable(objects())
    old_release = json.loads(first["ivr/results.json"])["release"]
    assert run.run("render", manifest(tmp_path, "marsh"), "-o", destination).returncode == 0
    second = objects()
    document = json.loads(second["ivr/results.json"])
    assert document["release"] != old_release
    for script in document["scripts"]:
        for output in script["outputs"]:
            released = output["uri"].removeprefix(f"s3://{s3_bucket}/")
            published = output["published_uri"].removeprefix(f"s3://{s3_bucket}/")
            assert released.startswith(f"ivr/releases/{document['release']}/")
            assert second[published] == second[released]
            assert hashlib.sha256(second[published]).hexdigest() == output["sha256"]
            head = s3.client.head_object(Bucket=s3_bucket, Key=published)
            assert head["ContentType"] == "audio/wav"
            assert head["Metadata"]["speaker"] == "marsh"
    assert {k for k in stable(second)} == set(first)
    assert all(stable(second)[k] != first[k] for k in first if k != "ivr/results.json")

    rolled = run.run("rollback", NAME)
    assert rolled.returncode == 0, rolled
    assert {k: v for k, v in stable(objects()).items() if k != "ivr/results.json"} == {
        k: v for k, v in first.items() if k != "ivr/results.json"
    }
    assert json.loads(objects()["ivr/results.json"])["release"] == old_release


def test_a_publish_that_fails_leaves_the_old_set_and_resume_finishes_it(
    cli: Cli, engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = engine_factory(api_keys=[KEY])
    run = cli.using(engine=engine, api_key=KEY)
    out = tmp_path / "out"
    assert run.run("render", manifest(tmp_path, "cove")).returncode == 0
    before = published_set(out)
    engine.configure(ttfb_ms=300)
    known = job_ids(run.database_url)
    running = run.start("render", manifest(tmp_path, "marsh"), "--concurrency", "2")
    job_of(running, run, known)
    # Once the job is under way (a folder there beforehand is refused as bad input), a folder
    # where a stable file must go: the publish cannot put that file in place.
    (out / "prompts" / "p05.mulaw.wav").unlink()
    (out / "prompts" / "p05.mulaw.wav").mkdir()
    before.pop("prompts/p05.mulaw.wav")

    rendered = running.wait()

    assert rendered.returncode == 1, rendered
    assert "Traceback" not in rendered.output
    job_id = rendered.stderr.split("job ")[1].split(":")[0]
    assert "publish failed" in rendered.stdout and f"rime-batch resume {job_id}" in rendered.stdout
    # results.json still names the old release, and says the same as before.
    assert published_set(out)["results.json"] == before["results.json"]
    (out / "prompts" / "p05.mulaw.wav").rmdir()
    engine.configure(ttfb_ms=0)
    engine.reset_metrics()

    resumed = run.run("resume", job_id)

    assert resumed.returncode == 0, resumed
    assert engine.metrics()["requests"] == 0
    assert_consistent(out, job_id)
    assert len(published_set(out)) == PROMPTS + 1
