"""The nightly figures read from an index: the index on (sweep_run_id, status) carries the
columns they count, and autovacuum visits predictions after each night

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 14:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COVERED = [
    "id",
    "main_category",
    "sub_category",
    "main_confidence",
    "sub_confidence",
    "needs_review",
    "audited",
]
# An index-only scan reads a row from the index alone only where the table's visibility map
# says its page holds no change a vacuum has not seen. Autovacuum's defaults wait for a fifth
# of the table to change, a dozen nights at a million rows, and until then every recent
# night is read from the wide rows again. 1% brings it the morning after each night.
AUTOVACUUM = {
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_insert_scale_factor": "0.01",
    "autovacuum_analyze_scale_factor": "0.01",
}


def upgrade() -> None:
    # Same key, more columns (PostgreSQL only: SQLite recreates it as it was). A plain DROP
    # and CREATE: writes to the table wait while it builds, about a second per million rows,
    # so run it between nights.
    op.drop_index("ix_predictions_sweep_status", table_name="predictions")
    op.create_index(
        "ix_predictions_sweep_status",
        "predictions",
        ["sweep_run_id", "status"],
        unique=False,
        postgresql_include=COVERED,
    )
    if op.get_bind().dialect.name == "postgresql":
        options = ", ".join(f"{name} = {value}" for name, value in AUTOVACUUM.items())
        op.execute(f"ALTER TABLE predictions SET ({options})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE predictions RESET ({', '.join(AUTOVACUUM)})")
    op.drop_index("ix_predictions_sweep_status", table_name="predictions")
    op.create_index(
        "ix_predictions_sweep_status", "predictions", ["sweep_run_id", "status"], unique=False
    )
