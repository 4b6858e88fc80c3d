"""segments.phonemes

A segment that holds phonemes a pronunciation lexicon wrote is sent with
phonemizeBetweenBrackets, and only such a segment, so the flag is the segment's own. Rows
recorded before it hold none.

Revision ID: b7e3c2a91f4d
Revises: 9d2f6a8c1e35
Create Date: 2026-12-01 17:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7e3c2a91f4d"
down_revision: str | Sequence[str] | None = "9d2f6a8c1e35"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("segments") as batch:
        batch.add_column(
            sa.Column("phonemes", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("segments") as batch:
        batch.drop_column("phonemes")
