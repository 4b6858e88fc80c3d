"""The job table: jobs, scripts and segments in SQL, one state machine, Alembic migrations.

    database     engines on SQLite or PostgreSQL, and migrations
    schema       the tables JOBS, SCRIPTS, SEGMENTS (SQLAlchemy Core), and OutputFile
    states       the one state machine of all three: State and its transitions
    plans        a JobPlan into rows and back, and the work one stage loads by row id
    transitions  compare-and-set state changes, each saying what it made due (`Next`)
    views        read-only: job lists, status summaries, what is left to do
    deliveries   webhook deliveries: recorded, claimed for one attempt, answered
    schedules    schedules and their runs: each due time claimed exactly once
    errors       StoreError, IllegalTransition, JobNotFound

Every process starts with `open_database(url)`; the modules take a Connection and never
commit, the caller owns the transaction:

    db = open_database(url)
    with db.begin() as conn:
        job_id = record_plan(conn, plan)
"""

from typing import TYPE_CHECKING, Any

from pipeline.store.database import (
    create_engine_for,
    downgrade,
    migrate,
    normalize_url,
    open_database,
)
from pipeline.store.errors import IllegalTransition, JobNotFound, StoreError
from pipeline.store.schema import OutputFile
from pipeline.store.states import State
from pipeline.store.transitions import Next

if TYPE_CHECKING:
    from pipeline.store.plans import load_plan, record_plan

__all__ = [
    "IllegalTransition",
    "JobNotFound",
    "Next",
    "OutputFile",
    "State",
    "StoreError",
    "create_engine_for",
    "downgrade",
    "load_plan",
    "migrate",
    "normalize_url",
    "open_database",
    "record_plan",
]


def __getattr__(name: str) -> Any:
    # Plans pull in the planner (segmenter, markup, Rime's parameters): a `status` needs none.
    if name in ("load_plan", "record_plan"):
        from pipeline.store import plans

        return getattr(plans, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
