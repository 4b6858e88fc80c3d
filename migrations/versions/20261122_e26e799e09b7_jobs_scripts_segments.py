"""jobs, scripts, segments

Revision ID: e26e799e09b7
Revises:
Create Date: 2026-11-22 03:55:50.695035+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e26e799e09b7"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of pipeline.store.states.State as of this revision.
STATES = ("pending", "running", "done", "failed", "cancelled")


def _state(table: str) -> tuple[sa.Column, sa.CheckConstraint]:
    listed = ", ".join(f"'{s}'" for s in STATES)
    return (
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.CheckConstraint(f"state IN ({listed})", name=op.f(f"ck_{table}_state")),
    )


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("destination", sa.Text(), nullable=False),
        *_state("jobs"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_created_at"), "jobs", ["created_at"], unique=False)

    op.create_table(
        "scripts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=12), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("script_id", sa.Text(), nullable=False),
        *_state("scripts"),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("output", sa.JSON(), nullable=False),
        sa.Column("lead_pause_ms", sa.Integer(), nullable=False),
        sa.Column("chars", sa.Integer(), nullable=False),
        sa.Column("billed_chars", sa.Integer(), nullable=False),
        sa.Column("audio_seconds", sa.Double(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stitch_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_scripts_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scripts")),
        sa.UniqueConstraint("job_id", "position", name=op.f("uq_scripts_job_id_position")),
        sa.UniqueConstraint("job_id", "script_id", name=op.f("uq_scripts_job_id_script_id")),
    )

    op.create_table(
        "segments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=12), nullable=False),
        sa.Column("script_pk", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("pause_after_ms", sa.Integer(), nullable=False),
        sa.Column("inline_speed_alpha", sa.JSON(), nullable=False),
        sa.Column("cache_key", sa.Text(), nullable=False),
        sa.Column("chars", sa.Integer(), nullable=False),
        *_state("segments"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("billed_chars", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("audio_seconds", sa.Double(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_segments_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["script_pk"],
            ["scripts.id"],
            name=op.f("fk_segments_script_pk_scripts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
        sa.UniqueConstraint("script_pk", "index", name=op.f("uq_segments_script_pk_index")),
    )
    op.create_index(op.f("ix_segments_job_id_state"), "segments", ["job_id", "state"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_segments_job_id_state"), table_name="segments")
    op.drop_table("segments")
    op.drop_table("scripts")
    op.drop_index(op.f("ix_jobs_created_at"), table_name="jobs")
    op.drop_table("jobs")
