"""Files still being written: deferred rows and each sweep's count of them

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 07:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (no table copy on SQLite, which predictions' foreign key would
    # refuse); the sweeps recorded before it left nothing for later.
    op.add_column(
        "sweep_runs",
        sa.Column("deferred", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )

    # Deferred rows are history, as failed ones are: a file still being written at every
    # sweep gets a row each time.
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_predictions_hash_model",
            postgresql_where=sa.text("status <> 'failed'"),
            sqlite_where=sa.text("status <> 'failed'"),
        )
        batch_op.create_index(
            "uq_predictions_hash_model",
            ["content_hash", "model_version"],
            unique=True,
            postgresql_where=sa.text("status NOT IN ('failed', 'deferred')"),
            sqlite_where=sa.text("status NOT IN ('failed', 'deferred')"),
        )


def downgrade() -> None:
    # A deferred row is a file that was left in incoming/: as a failed row it stays history
    # and blocks nothing under the older index.
    op.execute("UPDATE predictions SET status = 'failed' WHERE status = 'deferred'")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_predictions_hash_model",
            postgresql_where=sa.text("status NOT IN ('failed', 'deferred')"),
            sqlite_where=sa.text("status NOT IN ('failed', 'deferred')"),
        )
        batch_op.create_index(
            "uq_predictions_hash_model",
            ["content_hash", "model_version"],
            unique=True,
            postgresql_where=sa.text("status <> 'failed'"),
            sqlite_where=sa.text("status <> 'failed'"),
        )
    op.drop_column("sweep_runs", "deferred")
