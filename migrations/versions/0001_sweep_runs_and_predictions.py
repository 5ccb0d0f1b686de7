"""Sweep runs and predictions

Revision ID: 0001
Revises:
Create Date: 2026-11-25 14:40:24.410659
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweep_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("found", sa.Integer(), nullable=False),
        sa.Column("enqueued", sa.Integer(), nullable=False),
        sa.Column("succeeded", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("pending", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sweep_runs", schema=None) as batch_op:
        batch_op.create_index("ix_sweep_runs_started_at", ["started_at"], unique=False)
        batch_op.create_index(
            "uq_sweep_runs_one_running",
            ["status"],
            unique=True,
            postgresql_where=sa.text("status = 'running'"),
            sqlite_where=sa.text("status = 'running'"),
        )

    op.create_table(
        "predictions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column(
            "sweep_run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("file_name", sa.Text(), nullable=False),
        sa.Column("original_path", sa.Text(), nullable=False),
        sa.Column("final_path", sa.Text(), nullable=True),
        sa.Column("main_category", sa.String(length=128), nullable=True),
        sa.Column("main_confidence", sa.Float(), nullable=True),
        sa.Column("sub_category", sa.String(length=128), nullable=True),
        sa.Column("sub_confidence", sa.Float(), nullable=True),
        sa.Column("needs_review", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("classified_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["sweep_run_id"],
            ["sweep_runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_predictions_category", ["main_category", "sub_category"], unique=False
        )
        batch_op.create_index("ix_predictions_classified_at", ["classified_at"], unique=False)
        batch_op.create_index("ix_predictions_file_name", ["file_name"], unique=False)
        batch_op.create_index(
            "ix_predictions_review",
            ["classified_at"],
            unique=False,
            postgresql_where=sa.text("needs_review"),
            sqlite_where=sa.text("needs_review"),
        )
        batch_op.create_index(
            "ix_predictions_sweep_status", ["sweep_run_id", "status"], unique=False
        )
        batch_op.create_index(
            "uq_predictions_hash_model",
            ["content_hash", "model_version"],
            unique=True,
            postgresql_where=sa.text("status <> 'failed'"),
            sqlite_where=sa.text("status <> 'failed'"),
        )


def downgrade() -> None:
    # Kept as Alembic wrote it: a revision is a frozen record of one schema, so it spells
    # each index out again rather than sharing code that a later revision could change.
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_predictions_hash_model",
            postgresql_where=sa.text("status <> 'failed'"),
            sqlite_where=sa.text("status <> 'failed'"),
        )
        batch_op.drop_index("ix_predictions_sweep_status")
        batch_op.drop_index(
            "ix_predictions_review",
            postgresql_where=sa.text("needs_review"),
            sqlite_where=sa.text("needs_review"),
        )
        batch_op.drop_index("ix_predictions_file_name")
        batch_op.drop_index("ix_predictions_classified_at")
        batch_op.drop_index("ix_predictions_category")

    op.drop_table("predictions")
    with op.batch_alter_table("sweep_runs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_sweep_runs_one_running",
            postgresql_where=sa.text("status = 'running'"),
            sqlite_where=sa.text("status = 'running'"),
        )
        batch_op.drop_index("ix_sweep_runs_started_at")

    op.drop_table("sweep_runs")
