"""Before a job starts: does Rime answer at this URL, take this key, and know each voice?

A wrong `RIME_API_URL` used to cost minutes of retries and hundreds of warnings per run, and a
speaker unknown to its model a failed request per segment. The preflight asks once, before the
job is recorded or started, and fails in seconds with one line.

The request. Rime's API (see its documents) has no listing of voices and no call that checks a
key without synthesizing, so the cheapest request that answers all three questions is a
synthesis of one character (`PROBE_TEXT`) per distinct voice (model, speaker, language), with
the voice's own parameters. A wrong key gets 401 and an unknown speaker 400 before anything is
generated, so the refused request bills nothing; a passed one bills one character per voice.
Every request the preflight sent is counted in the job table as an attempt of the voice's first
segment to send (its billed characters with it), once the job is recorded. A preflight that
fails records no job, so the one character of a voice checked before a refused one is the only
charge no job shows. Voices whose every segment is in the segment cache are not asked about: a
render of an unchanged manifest still sends no request.

Where it runs: `render` and `resume` before the job is recorded or started, and `submit` on the
submitting host before anything is recorded or sent (every host shares one environment, and it
is where someone waits for an answer; `--no-check` skips it for a host that cannot reach Rime).
Workers do not repeat it: a refused key there still fails the job at its first request
(`pipeline.stages`).

The rule for a host that does not answer. A connection refused, an unknown host or a connect
timeout before Rime has answered anything in this run is not transient: it is a wrong URL or a
host that is down, and it fails after `PROBE_POLICY`'s few quick tries. Once the preflight has
had an answer, the same errors during the job are a restart or a network blip and are retried
under the job's own policy. Any other transient answer (429, 5xx, a cut stream) means Rime is
there: the preflight says so in a warning and the job goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

from sqlalchemy import Engine

from pipeline.errors import InputError, RimeBatchError, Unreachable, first_line, without_credentials
from pipeline.plan import JobPlan, PlannedSegment, timed_keys
from pipeline.retry import RetryPolicy
from pipeline.rime.errors import (
    AuthError,
    BadRequest,
    ConnectError,
    PermanentError,
    RimeError,
    TransientError,
)
from pipeline.rime.params import TtsRequest, VoiceParams
from pipeline.stages import Context
from pipeline.storage.keys import is_cached
from pipeline.store import State, transitions, views
from pipeline.synth import REQUEST_FORMAT, Synthesizer

log = logging.getLogger(__name__)

PROBE_TEXT = "a"
# A few quick tries: enough for a blip, far short of the job's minutes of retries.
PROBE_POLICY = RetryPolicy(
    max_attempts=3, max_rate_limited=3, max_seconds=20.0, initial_wait=0.5, max_wait=2.0, jitter=0.2
)
# Manifest fields a 400 about a voice may be about, as Rime names them.
_VOICE_FIELDS = ("speaker", "modelId", "lang", "samplingRate", "speedAlpha")

# Counts what the preflight billed in the job table, once the job has its rows.
Record = Callable[[Engine, str], None]


@dataclass(frozen=True)
class Probe:
    """One voice to ask Rime about, and the first of its segments that needs a request."""

    params: VoiceParams
    script_index: int  # in the manifest's order
    script_id: str
    segment_index: int  # where the probe's request is counted
    scripts: int  # scripts of this voice that need a request


def _voice(params: VoiceParams) -> tuple[str, str, str | None]:
    return params.model_id, params.speaker, params.lang


def probes_for(plan: JobPlan, cached: Callable[[PlannedSegment], bool]) -> list[Probe]:
    """One probe per distinct voice with a segment that is not `cached`, in manifest order."""
    found: dict[tuple[str, str, str | None], Probe] = {}
    for index, script in enumerate(plan.scripts):
        voice = _voice(script.params)
        if voice in found:
            probe = found[voice]
            if any(not cached(s) for s in script.segments):
                found[voice] = replace(probe, scripts=probe.scripts + 1)
            continue
        first = next((s for s in script.segments if not cached(s)), None)
        if first is not None:
            found[voice] = Probe(script.params, index, script.script_id, first.index, 1)
    return list(found.values())


def _voice_text(params: VoiceParams) -> str:
    lang = f", lang {params.lang!r}" if params.lang else ""
    return f"speaker {params.speaker!r} with modelId {params.model_id!r}{lang}"


def _refused_voice(manifest: str, probe: Probe, exc: RimeError) -> InputError:
    said = exc.message.lower()
    field = next((f for f in _VOICE_FIELDS if f.lower() in said), "speaker")
    others = f" and {probe.scripts - 1} more" if probe.scripts > 1 else ""
    return InputError(
        f"{manifest}: scripts[{probe.script_index}].{field} ({probe.script_id!r}{others}): "
        f"Rime refused {_voice_text(probe.params)}: {exc}"
    )


@dataclass(frozen=True)
class Sent:
    """One request of the preflight, as the job table counts it."""

    billed: bool  # Rime generated (and charged for) PROBE_TEXT
    error: str | None = None


async def _ask(
    client: Synthesizer, probe: Probe, *, url: str, manifest: str, policy: RetryPolicy
) -> list[Sent]:
    """Ask about one voice; every request sent, when Rime answered at all."""
    request = TtsRequest(PROBE_TEXT, probe.params)
    sent: list[Sent] = []
    answered = False
    try:
        async for attempt in policy.retrying():
            with attempt:
                try:
                    await client.synthesize(request, REQUEST_FORMAT)
                except TransientError as exc:
                    sent.append(Sent(exc.billed, str(exc)))
                    answered = answered or not isinstance(exc, ConnectError)
                    log.warning(
                        "preflight of %s, try %d of %d: %s",
                        _voice_text(probe.params),
                        attempt.retry_state.attempt_number,
                        policy.max_attempts,
                        _said(exc),
                    )
                    raise
                return [*sent, Sent(billed=True)]
    except ConnectError as exc:
        if answered:  # it did answer, then went away: the job's retries take it from here
            log.warning("Rime stopped answering the preflight; starting the job anyway")
            return sent
        cause = exc.__cause__ or exc
        tries = len(sent)
        raise Unreachable("Rime", url, f"{first_line(cause)} ({tries} tries)") from None
    except TransientError:
        log.warning("Rime is there but could not answer the preflight; starting the job anyway")
        return sent
    except AuthError as exc:
        where = without_credentials(url)
        raise RimeBatchError(f"Rime at {where} refused the API key: {exc}") from None
    except BadRequest as exc:
        raise _refused_voice(manifest, probe, exc) from None
    except PermanentError as exc:
        where = without_credentials(url)
        raise RimeBatchError(f"Rime at {where} answered the preflight with {exc}") from None
    raise AssertionError("unreachable: the retry policy re-raises the last error")


def _said(exc: RimeError) -> str:
    # Retry lines leave the URL out: the one line that names it is the final error.
    if isinstance(exc, ConnectError):
        return f"no answer ({first_line(exc.__cause__ or exc)})"
    return f"HTTP {exc.status}" if exc.status is not None else type(exc).__name__


async def check(
    client: Synthesizer,
    probes: Sequence[Probe],
    *,
    url: str,
    manifest: str,
    policy: RetryPolicy = PROBE_POLICY,
) -> list[tuple[Probe, list[Sent]]]:
    """Ask Rime about every probe, one after the other; each probe with the requests it sent.

    Raises Unreachable (no answer at `url`), RimeBatchError (the key was refused, or another
    refusal) or InputError (a voice of the manifest was refused, naming its field).
    """
    return [
        (probe, await _ask(client, probe, url=url, manifest=manifest, policy=policy))
        for probe in probes
    ]


def record(db: Engine, job_id: str, sent: Sequence[tuple[Probe, list[Sent]]]) -> None:
    """Count the preflight's requests as attempts of the segments they were made for."""
    wanted = {(p.script_id, p.segment_index): requests for p, requests in sent if requests}
    if not wanted:
        return
    with db.begin() as conn:
        for ref in views.list_segments(conn, job_id, [State.PENDING]):
            for one in wanted.pop((ref.script_id, ref.index), []):
                billed = len(PROBE_TEXT) if one.billed else 0
                transitions.record_attempt(
                    conn, ref.segment_pk, billed_chars=billed, error=one.error
                )


async def preflight(
    client: Synthesizer, plan: JobPlan, url: str, cached: Callable[[PlannedSegment], bool]
) -> Record:
    """Check Rime for the plan's voices with a segment not `cached` (every voice of a job that
    skips the cache); what counts the probes."""
    if plan.options.no_cache:
        cached = _nothing_cached
    probes = await asyncio.to_thread(probes_for, plan, cached)
    sent = await check(client, probes, url=url, manifest=plan.manifest)
    return partial(record, sent=sent)


def _nothing_cached(_segment: PlannedSegment) -> bool:
    return False


def cached_for(ctx: Context, plan: JobPlan) -> Callable[[PlannedSegment], bool]:
    """Whether a segment's audio is in the plan's segment cache, as `ctx`'s stages look it up."""
    store = ctx.store(plan.destination)
    timed = timed_keys(plan)
    return lambda segment: is_cached(
        store, ctx.cache_path(segment.cache_key), words=segment.cache_key in timed
    )
