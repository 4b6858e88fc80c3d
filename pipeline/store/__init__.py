"""The job table: jobs, scripts and segments, one state machine, Alembic migrations.

engine = create_engine_for(url); migrate(url)
sessions = session_factory(engine)
with sessions.begin() as session:
    job_id = record_plan(session, plan)
"""

from pipeline.store.db import (
    DEFAULT_DATABASE_URL,
    create_engine_for,
    normalize_url,
    session_factory,
)
from pipeline.store.errors import IllegalTransition, JobNotFound, StoreError
from pipeline.store.handoff import finish_script_and_settle_job, finish_segment_and_claim_stitch
from pipeline.store.migrate import downgrade, migrate
from pipeline.store.models import OutputFile
from pipeline.store.plans import (
    ScriptWork,
    SegmentWork,
    load_plan,
    load_script,
    load_segment,
    record_plan,
)
from pipeline.store.queries import (
    JobRow,
    JobSummary,
    ScriptRow,
    SegmentRef,
    job_summary,
    list_jobs,
    list_segments,
    resolve_job_id,
    stitchable_scripts,
)
from pipeline.store.repo import (
    cancel_job,
    claim_segment,
    claim_stitch,
    fail_script,
    fail_segment,
    finish_script,
    finish_segment,
    record_attempt,
    release_script,
    release_segment,
    requeue_stale,
    reset_for_resume,
    settle_job,
    start_job,
)
from pipeline.store.states import TRANSITIONS, State, can_transition

__all__ = [
    "DEFAULT_DATABASE_URL",
    "TRANSITIONS",
    "IllegalTransition",
    "JobNotFound",
    "JobRow",
    "JobSummary",
    "OutputFile",
    "ScriptRow",
    "ScriptWork",
    "SegmentRef",
    "SegmentWork",
    "State",
    "StoreError",
    "can_transition",
    "cancel_job",
    "claim_segment",
    "claim_stitch",
    "create_engine_for",
    "downgrade",
    "fail_script",
    "fail_segment",
    "finish_script",
    "finish_script_and_settle_job",
    "finish_segment",
    "finish_segment_and_claim_stitch",
    "job_summary",
    "list_jobs",
    "list_segments",
    "load_plan",
    "load_script",
    "load_segment",
    "migrate",
    "normalize_url",
    "record_attempt",
    "record_plan",
    "release_script",
    "release_segment",
    "requeue_stale",
    "reset_for_resume",
    "resolve_job_id",
    "session_factory",
    "settle_job",
    "start_job",
    "stitchable_scripts",
]
