"""Jobs: create one from a manifest, list, get, cancel, resume, re-render; its outputs' audio
and its webhook deliveries.

A manifest in a request body has no folder of its own. It is read as if it were the file
`<root>/<name>` (root: RIME_BATCH_SERVICE_ROOT, default the folder `serve` started in; name: the
`name` query parameter, default `manifest.yaml`, `.json` or `.csv` by Content-Type), so its
`text_file`s and `scripts_csv` are files inside the root, under the manifest's own rule (never
outside its folder), and a relative `output` is a folder under the root. A local destination
outside the root is refused: a client of the API may write only where the service was told.
Errors name the file as the client did, relative to the root.

The body is kept with the job (`job_manifests`), so a re-render plans the same manifest again.
"""

from __future__ import annotations

import mimetypes
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import Connection, insert, select

from pipeline.errors import InputError, ManifestError
from pipeline.manifest.source import is_s3, open_source
from pipeline.options import JobOptions, Publish
from pipeline.plan import JobPlan, job_options, plan_manifest
from pipeline.store import State, views
from pipeline.store.schema import JOB_MANIFESTS
from service import idempotency
from service.api.common import (
    Limit,
    Offset,
    check_destination,
    off_loop,
    page,
    resolve_output,
    state_of,
)
from service.auth import Caller, reader, writer
from service.errors import ApiError, not_found
from service.models import (
    Created,
    DeliveryOut,
    DeliveryPage,
    JobDetail,
    JobOut,
    JobPage,
    RerenderIn,
)
from service.state import ServiceState

if TYPE_CHECKING:
    from pipeline.manifest import JobSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_SUFFIX = {"application/json": ".json", "text/csv": ".csv"}
_MANIFEST_TYPES = {
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "text/x-yaml",
    "application/json",
    "text/csv",
    "text/plain",
}
_BODY = {
    "requestBody": {
        "required": True,
        "description": "The manifest, as in a file: YAML, JSON or CSV",
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}
_AUDIO = {
    "wav": "audio/wav",
    "wav-mulaw": "audio/wav",
    "mulaw": "audio/basic",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
}
# How long a presigned S3 URL of an output lives.
PRESIGN_SECONDS = 300


def manifest_name(name: str | None, content_type: str) -> str:
    """The file name a posted manifest is read as (checked: a plain name, no folder)."""
    media = content_type.split(";")[0].strip().lower()
    if media and media not in _MANIFEST_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {media!r}: send a manifest as application/yaml, application/json or "
            "text/csv",
        )
    if name is None:
        return "manifest" + _SUFFIX.get(media, ".yaml")
    if "/" in name or "\\" in name or name.startswith(".") or not name.isprintable():
        raise ApiError(422, "invalid_input", "name: a plain file name, such as clinic.yaml", "name")
    return name


async def _body(request: Request) -> bytes:
    """The request's body, refused once it outgrows the manifest limit (never read whole)."""
    from pipeline.manifest.models import MAX_MANIFEST_BYTES

    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_MANIFEST_BYTES:
            raise ApiError(
                413,
                "too_large",
                f"the manifest is over {MAX_MANIFEST_BYTES:,} bytes (put long texts in files "
                "under the service's root and name them with text_file)",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _relative(exc: ManifestError, root: Path) -> ManifestError:
    """The error with its file named relative to the root, as the client knows it."""
    if exc.file is None or not Path(exc.file).is_relative_to(root):
        return exc
    shown = Path(exc.file).relative_to(root)
    return ManifestError(exc.message, file=shown, line=exc.line, row=exc.row, field=exc.field)


def _plan(
    state: ServiceState, name: str, body: bytes, output: str | None, options: JobOptions
) -> JobPlan:
    """The plan of a posted manifest, checked as `render` checks one."""
    from pipeline.deliver import require_secret

    try:
        plan = plan_manifest(
            state.root / name, output=resolve_output(state, output), options=options, data=body
        )
    except ManifestError as exc:
        raise _relative(exc, state.root) from None
    check_destination(state, plan.destination)
    require_secret(plan.options.notify, state.settings.webhook_secret)
    return plan


def _keeper(body: bytes) -> Any:
    def keep(conn: Connection, job_id: str) -> None:
        conn.execute(insert(JOB_MANIFESTS).values(job_id=job_id, body=body.decode("utf-8-sig")))

    return keep


def _job(state: ServiceState, job_id: str) -> JobOut:
    since = _dead_before(state)
    with state.db.begin() as conn:
        return JobOut.of(views.job_summary(conn, job_id, dead_before=since).job)


def _dead_before(state: ServiceState) -> Any:
    from pipeline.store import executors

    return executors.dead_before(state.settings.executor_timeout_seconds)


@router.post(
    "",
    status_code=201,
    response_model=Created,
    openapi_extra=_BODY,
    summary="Create a job from a manifest",
    responses={200: {"model": Created, "description": "The job this Idempotency-Key made"}},
)
async def create_job(
    request: Request,
    response: Response,
    _caller: Annotated[Caller, Depends(writer)],
    name: Annotated[str | None, Query(description="The manifest's file name")] = None,
    output: Annotated[str | None, Query(description="Destination, as -o")] = None,
    publish: Annotated[Publish, Query()] = Publish.AUTO,
    no_cache: bool = False,
    set_: Annotated[list[str] | None, Query(alias="set", description="key=value")] = None,
    voice_map: Annotated[list[str] | None, Query(description="old=new")] = None,
    notify: Annotated[list[str] | None, Query(description="A webhook URL")] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Created:
    """Validate the manifest as `render` does (a 422 names its file, line and field), record
    the job and start it. A repeated Idempotency-Key answers with the job it made."""
    state = state_of(request)
    file = manifest_name(name, request.headers.get("content-type", ""))
    body = await _body(request)
    options = job_options(set_, voice_map, no_cache=no_cache, publish=publish.value, notify=notify)

    def create() -> str:
        return create_from_manifest(state, file, body, output, options)

    if idempotency_key is None:
        job_id, created = await off_loop(create), True
    else:
        digest = idempotency.request_hash(
            file, body, repr(sorted(request.query_params.multi_items()))
        )
        job_id, created = await off_loop(
            idempotency.once, state.db, idempotency_key, digest, create
        )
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return Created(job=await off_loop(_job, state, job_id))


@router.get("", response_model=JobPage, summary="List jobs, newest first")
async def list_jobs(
    request: Request,
    _caller: Annotated[Caller, Depends(reader)],
    limit: Limit = 20,
    offset: Offset = 0,
    state: State | None = None,
) -> JobPage:
    """A page of jobs, optionally in one state."""
    service = state_of(request)

    def read() -> JobPage:
        with service.db.begin() as conn:
            rows = views.list_jobs(
                conn,
                limit=limit + 1,
                offset=offset,
                state=state,
                dead_before=_dead_before(service),
            )
        items, next_offset = page(rows, limit, offset)
        return JobPage(items=[JobOut.of(r) for r in items], next_offset=next_offset)

    return await off_loop(read)


@router.get("/{job_id}", response_model=JobDetail, summary="A job and its scripts")
async def get_job(
    request: Request, job_id: str, _caller: Annotated[Caller, Depends(reader)]
) -> Response:
    """State, progress, characters, billed, errors and every script's outputs."""
    state = state_of(request)

    def read() -> bytes:
        with state.db.begin() as conn:
            summary = views.job_summary(conn, job_id, dead_before=_dead_before(state))
        # Serialized once, here: the model is built from typed rows already, and a second
        # validation by the framework would double a 1,000-script page's cost.
        return JobDetail.of(summary).model_dump_json().encode()

    return Response(await off_loop(read), media_type="application/json")


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a job")
async def cancel_job(
    request: Request, job_id: str, _caller: Annotated[Caller, Depends(writer)]
) -> JobOut:
    """Nothing more is sent; requests in flight stop within a heartbeat."""
    state = state_of(request)

    def cancel() -> JobOut:
        from workers.commands import cancel as cancel_job

        with state.db.begin() as conn:
            views.job_summary(conn, job_id)  # JobNotFound before anything changes
        cancel_job(job_id, database_url=state.settings.database_url)
        return _job(state, job_id)

    return await off_loop(cancel)


@router.post("/{job_id}/resume", response_model=JobOut, summary="Resume a job")
async def resume_job(
    request: Request, job_id: str, _caller: Annotated[Caller, Depends(writer)]
) -> JobOut:
    """Finish a failed, cancelled or interrupted job; done work is kept."""
    state = state_of(request)

    def resume() -> JobOut:
        with state.db.begin() as conn:
            views.job_summary(conn, job_id)
        state.runner.resume(job_id)
        return _job(state, job_id)

    return await off_loop(resume)


@router.post(
    "/{job_id}/rerender",
    status_code=201,
    response_model=Created,
    summary="Render a job's manifest again, all of it or some scripts, with overrides",
)
async def rerender_job(
    request: Request, job_id: str, change: RerenderIn, _caller: Annotated[Caller, Depends(writer)]
) -> Created:
    """A new job (a new release) of the job's manifest, with `set` and `voice_map` added to the
    job's own. With `scripts`, only those change: the others keep the job's plan, so their
    audio comes from the segment cache and nothing of theirs is billed."""
    state = state_of(request)
    new_id = await off_loop(rerender, state, job_id, change)
    return Created(job=await off_loop(_job, state, new_id))


def create_from_manifest(
    state: ServiceState, file: str, body: bytes, output: str | None, options: JobOptions
) -> str:
    """Plan a posted manifest (read as `<root>/<file>`), record its job and start it; its id.
    The API's POST and the console's form both create jobs here."""
    plan = _plan(state, file, body, output, options)
    return state.runner.submit(plan, _keeper(body))


def rerender(state: ServiceState, job_id: str, change: RerenderIn) -> str:
    """Record and start a new job of `job_id`'s manifest as `change` asks; its id. The API's
    rerender and the console's re-render of one take both go through here."""
    with state.db.begin() as conn:
        views.job_summary(conn, job_id)
        old = _load_plan(conn, job_id)
        kept = conn.scalar(select(JOB_MANIFESTS.c.body).where(JOB_MANIFESTS.c.job_id == job_id))
    body = kept.encode() if kept is not None else None
    if body is None and not is_s3(old.manifest) and not Path(old.manifest).is_file():
        raise InputError(f"job {job_id}'s manifest is gone: post it again as a new job")
    added = job_options(change.set, change.voice_map)
    options = replace(
        old.options,
        set=(*old.options.set, *added.set),
        voice_map=(*old.options.voice_map, *added.voice_map),
        publish=Publish(change.publish) if change.publish else old.options.publish,
        schedule=None,
    )

    def edited(job: JobSpec) -> JobSpec:
        from pipeline.manifest.edits import edit_script

        for e in change.edits:
            job = edit_script(job, e.script, text=e.text, speaker=e.speaker)
        return job

    try:
        new = plan_manifest(
            old.manifest, output=old.destination, options=options, data=body, edit=edited
        )
    except ManifestError as exc:
        raise _relative(exc, state.root) from None
    if change.scripts is not None:
        edited_ids = [e.script for e in change.edits if e.script not in change.scripts]
        chosen = [*change.scripts, *edited_ids]
        new = _only(old, new, chosen, options)
    data = body if body is not None else open_source(old.manifest).read()
    return state.runner.submit(new, _keeper(data))


def _load_plan(conn: Connection, job_id: str) -> JobPlan:
    from pipeline.store import load_plan

    return load_plan(conn, job_id)


def _only(old: JobPlan, new: JobPlan, chosen: list[str], options: JobOptions) -> JobPlan:
    """`old` with the scripts in `chosen` as `new` plans them."""
    fresh = {s.script_id: s for s in new.scripts}
    unknown = [s for s in chosen if s not in fresh]
    if unknown:
        raise ApiError(
            422, "invalid_input", f"scripts: no script {unknown[0]!r} in the manifest", "scripts"
        )
    wanted = set(chosen)
    scripts = tuple(fresh[s.script_id] if s.script_id in wanted else s for s in old.scripts)
    # The overrides applied to the chosen scripts only: the job records the old job's, with
    # this request's publish mode.
    return replace(
        old, scripts=scripts, options=replace(old.options, publish=options.publish, schedule=None)
    )


@router.get(
    "/{job_id}/outputs/{fmt}/{script_id:path}",
    summary="One output's audio",
    response_class=Response,
    responses={
        200: {"content": {mime: {} for mime in sorted(set(_AUDIO.values()))}},
        307: {"description": "An S3 output: a presigned URL"},
    },
)
async def get_output(
    request: Request,
    job_id: str,
    fmt: str,
    script_id: str,
    _caller: Annotated[Caller, Depends(reader)],
) -> Response:
    """The file of one output recorded for this job; the request names it, the job table says
    where it is."""
    state = state_of(request)

    def find() -> tuple[str, str]:
        with state.db.begin() as conn:
            summary = views.job_summary(conn, job_id)
        for script in summary.scripts:
            if script.script_id != script_id:
                continue
            for output in script.outputs:
                if output.format == fmt:
                    return output.uri, summary.job.destination
            raise not_found(f"script {script_id!r} of job {job_id} has no {fmt!r} output")
        raise not_found(f"job {job_id} has no script {script_id!r}")

    uri, destination = await off_loop(find)
    media = _AUDIO.get(fmt) or mimetypes.guess_type(uri)[0] or "application/octet-stream"
    if uri.startswith("s3://"):
        url = await off_loop(_presigned, uri, destination)
        return RedirectResponse(url, status_code=307)
    path = Path(uri).resolve()
    # The job table's own uri, inside the job's own destination: checked anyway.
    if not path.is_relative_to(Path(destination).resolve()) or not path.is_file():
        raise not_found(f"the {fmt!r} output of {script_id!r} is gone")
    return FileResponse(path, media_type=media, filename=path.name)


def _presigned(uri: str, destination: str) -> str:
    from pipeline.storage import open_store, parse_s3_uri
    from pipeline.storage.s3 import S3Store

    store = open_store(destination)
    bucket, key = parse_s3_uri(uri)
    if not isinstance(store, S3Store) or bucket != store.bucket or not key.startswith(store.prefix):
        raise not_found("the output is not in the job's destination")
    url: str = store.client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS
    )
    return url


@router.get("/{job_id}/deliveries", response_model=DeliveryPage, summary="Webhook deliveries")
async def job_deliveries(
    request: Request, job_id: str, _caller: Annotated[Caller, Depends(reader)]
) -> DeliveryPage:
    """Each webhook delivery of the job's end: event, URL (redacted), state, attempts."""
    state = state_of(request)

    def read() -> DeliveryPage:
        from pipeline.store import deliveries

        with state.db.begin() as conn:
            views.job_summary(conn, job_id)
            rows = deliveries.for_job(conn, job_id)
        return DeliveryPage(items=[DeliveryOut.of(d) for d in rows])

    return await off_loop(read)
