"""reviews.blind: whether a decision was given without the model's answer shown

The promotion gate counts blind labels apart from those given with the serving model's
answer in view, which lean towards it. Reviews from before: those of audited photos were
blind (the desk has always hidden the answer of an audit), the others seen.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN: no table copy on SQLite.
    op.add_column(
        "reviews",
        sa.Column("blind", sa.Boolean(), nullable=False, server_default=sa.text("false")),
    )
    op.execute(
        "UPDATE reviews SET blind = true"
        " WHERE prediction_id IN (SELECT id FROM predictions WHERE audited)"
    )


def downgrade() -> None:
    op.drop_column("reviews", "blind")
