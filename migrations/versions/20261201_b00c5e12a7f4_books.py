"""books

A job's book: its metadata and chapters as planned, the cover image, and once assembled its
files (an M4B with chapters, tagged MP3s, a playlist) and chapter times. A job with a book is
done only when its book is.

Revision ID: b00c5e12a7f4
Revises: 5b7e3d91a4c2
Create Date: 2026-12-01 17:45:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b00c5e12a7f4"
down_revision: str | Sequence[str] | None = "5b7e3d91a4c2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of pipeline.store.states.State as of this revision.
STATES = ("pending", "running", "done", "failed", "cancelled")
LISTED = ", ".join(f"'{s}'" for s in STATES)


def upgrade() -> None:
    op.create_table(
        "books",
        sa.Column("job_id", sa.String(length=12), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("cover", sa.LargeBinary(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("chapters", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim", sa.String(length=40), nullable=True),
        sa.Column("executor", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_books_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_books")),
        sa.CheckConstraint(f"state IN ({LISTED})", name=op.f("ck_books_state")),
    )


def downgrade() -> None:
    op.drop_table("books")
