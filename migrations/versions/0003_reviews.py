"""Reviews: who decided which category for a prediction, and when

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 09:40:51.630114
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "prediction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("reviewer", sa.String(length=128), nullable=False),
        sa.Column("main_category", sa.String(length=128), nullable=False),
        sa.Column("sub_category", sa.String(length=128), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.create_index("ix_reviews_prediction", ["prediction_id", "id"], unique=False)
        batch_op.create_index("ix_reviews_reviewed_at", ["reviewed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_index("ix_reviews_reviewed_at")
        batch_op.drop_index("ix_reviews_prediction")

    op.drop_table("reviews")
