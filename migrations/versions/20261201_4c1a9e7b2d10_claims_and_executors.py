"""claims and executors

Every claim of a segment or a stitch names its claim token and the executor (a render process
or a worker process) holding it; executors beat a heartbeat row, so a claim whose executor
stopped beating can be taken over, and a job whose executor is gone shows as interrupted.

Revision ID: 4c1a9e7b2d10
Revises: e26e799e09b7
Create Date: 2026-12-01 11:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4c1a9e7b2d10"
down_revision: str | Sequence[str] | None = "e26e799e09b7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "executors",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_executors")),
    )
    for table in ("segments", "scripts"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("claim", sa.String(length=40), nullable=True))
            batch.add_column(sa.Column("executor", sa.String(length=16), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("executor", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("executor")
    for table in ("scripts", "segments"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("executor")
            batch.drop_column("claim")
    op.drop_table("executors")
