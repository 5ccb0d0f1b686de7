"""A candidate model's answers from its shadow runs

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shadow_predictions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "prediction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("main_category", sa.String(length=128), nullable=False),
        sa.Column("main_confidence", sa.Float(), nullable=False),
        sa.Column("sub_category", sa.String(length=128), nullable=False),
        sa.Column("sub_confidence", sa.Float(), nullable=False),
        sa.Column("needs_review", sa.Boolean(), nullable=False),
        sa.Column("review_threshold", sa.Float(), nullable=False),
        sa.Column("shadow_probability", sa.Float(), nullable=False),
        sa.Column("candidate_seconds", sa.Float(), nullable=False),
        sa.Column("serving_seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["prediction_id"], ["predictions.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "prediction_id", "model_version", name="uq_shadow_predictions_prediction_model"
        ),
    )
    op.create_index(
        "ix_shadow_predictions_model_version",
        "shadow_predictions",
        ["model_version"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_shadow_predictions_model_version", table_name="shadow_predictions")
    op.drop_table("shadow_predictions")
