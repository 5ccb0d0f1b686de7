"""The model registry: model versions with their role and store file, and the log of the
serving model's changes; filled with the versions already on rows

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 15:10:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Who the upgrade records as having registered and retired the versions it found.
UPGRADE = "db upgrade"


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("file_name", sa.Text(), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("registered_by", sa.String(length=128), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_by", sa.String(length=128), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_by", sa.String(length=128), nullable=True),
        sa.Column("figures", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("version"),
    )
    for role in ("serving", "candidate"):
        op.create_index(
            f"uq_model_versions_one_{role}",
            "model_versions",
            ["role"],
            unique=True,
            postgresql_where=sa.text(f"role = '{role}'"),
            sqlite_where=sa.text(f"role = '{role}'"),
        )
    op.create_table(
        "model_promotions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("replaced", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["version"], ["model_versions.version"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_model_promotions_version", "model_promotions", ["version", "id"], unique=False
    )
    _fill_from_rows()


def _fill_from_rows() -> None:
    """Every version a sweep ran with or a row was classified by becomes a retired entry,
    registered when it first appears on a row. Their files were never stored, so none can
    serve yet: the first process that asks which model serves stores the file at
    REFUND_SORTER_MODEL_PATH and makes it serve (registry.registry), and that file is
    the last sweep's model unless it was replaced since."""
    sweeps = sa.table(
        "sweep_runs",
        sa.column("model_version", sa.String()),
        sa.column("started_at", sa.DateTime(timezone=True)),
    )
    predictions = sa.table(
        "predictions",
        sa.column("model_version", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    conn = op.get_bind()
    first_seen: dict[str, datetime] = {}
    for table, when in ((sweeps, sweeps.c.started_at), (predictions, predictions.c.created_at)):
        rows = conn.execute(
            sa.select(table.c.model_version, sa.func.min(when)).group_by(table.c.model_version)
        )
        for version, seen in rows:
            seen = seen.replace(tzinfo=UTC) if seen.tzinfo is None else seen  # SQLite: naive
            if version not in first_seen or seen < first_seen[version]:
                first_seen[version] = seen
    if not first_seen:
        return
    now = datetime.now(UTC)
    entries = sa.table(
        "model_versions",
        sa.column("version", sa.String()),
        sa.column("role", sa.String()),
        sa.column("registered_at", sa.DateTime(timezone=True)),
        sa.column("registered_by", sa.String()),
        sa.column("retired_at", sa.DateTime(timezone=True)),
        sa.column("retired_by", sa.String()),
    )
    conn.execute(
        entries.insert(),
        [
            {
                "version": version,
                "role": "retired",
                "registered_at": seen,
                "registered_by": UPGRADE,
                "retired_at": now,
                "retired_by": UPGRADE,
            }
            for version, seen in sorted(first_seen.items())
        ],
    )


def downgrade() -> None:
    op.drop_index("ix_model_promotions_version", table_name="model_promotions")
    op.drop_table("model_promotions")
    for role in ("serving", "candidate"):
        op.drop_index(
            f"uq_model_versions_one_{role}",
            table_name="model_versions",
            postgresql_where=sa.text(f"role = '{role}'"),
            sqlite_where=sa.text(f"role = '{role}'"),
        )
    op.drop_table("model_versions")
