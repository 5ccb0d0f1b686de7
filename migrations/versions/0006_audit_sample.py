"""The blind audit sample: audited rows, the audit rate and review threshold in force, and
each prediction's margin between its two best sub categories

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 07:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs (no table copy on SQLite, which predictions' foreign keys would
    # refuse). Rows classified before: never audited; rate and threshold unknown.
    op.add_column("predictions", sa.Column("sub_margin", sa.Float(), nullable=True))
    op.add_column(
        "predictions",
        sa.Column("audited", sa.Boolean(), nullable=False, server_default=sa.text("false")),
    )
    op.add_column("predictions", sa.Column("audit_rate", sa.Float(), nullable=True))
    op.add_column("predictions", sa.Column("review_threshold", sa.Float(), nullable=True))
    op.create_index(
        "ix_predictions_audit",
        "predictions",
        ["sweep_run_id"],
        unique=False,
        postgresql_where=sa.text("audited"),
        sqlite_where=sa.text("audited"),
    )
    # The margin of the rows that stored their best sub categories, so that the review
    # queue orders them by doubt too.
    predictions = sa.table(
        "predictions",
        sa.column("id", sa.BigInteger()),
        sa.column("top_subs", sa.JSON()),
        sa.column("sub_margin", sa.Float()),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(predictions.c.id, predictions.c.top_subs).where(
            predictions.c.top_subs.is_not(None)
        )
    ).all()
    margins = [
        {"b_id": row_id, "margin": top[0]["p"] - (top[1]["p"] if len(top) > 1 else 0.0)}
        for row_id, top in rows
        if top
    ]
    if margins:
        conn.execute(
            predictions.update()
            .where(predictions.c.id == sa.bindparam("b_id"))
            .values(sub_margin=sa.bindparam("margin")),
            margins,
        )


def downgrade() -> None:
    op.drop_index(
        "ix_predictions_audit",
        table_name="predictions",
        postgresql_where=sa.text("audited"),
        sqlite_where=sa.text("audited"),
    )
    for column in ("review_threshold", "audit_rate", "audited", "sub_margin"):
        op.drop_column("predictions", column)
