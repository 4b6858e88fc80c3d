"""script loudness and warnings

Each script records what loudness normalization asked for and what its encoded programme
measures (integrated loudness, range, true peak, the gain, whether it was limited), and the
warnings that did not fail it (a target missed by more than 1 LU).

Revision ID: 5b7e3d91a4c2
Revises: b7e3c2a91f4d
Create Date: 2026-12-01 18:05:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b7e3d91a4c2"
down_revision: str | Sequence[str] | None = "b7e3c2a91f4d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scripts") as batch:
        batch.add_column(sa.Column("loudness", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("warnings", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scripts") as batch:
        batch.drop_column("warnings")
        batch.drop_column("loudness")
