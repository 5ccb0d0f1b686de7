"""Statuses held to their values by CHECK constraints; sweep_runs.skipped renamed known

A status no code knows (a typo in a hand-written UPDATE, a value from a newer release) is
refused by the database. The photos a sweep found and left alone, known already, were
counted in ``sweep_runs.skipped`` beside the sweep status ``skipped`` (another sweep was
running): the count is renamed ``known`` so that "skipped" names the sweep status alone. An
operator's query that still reads ``skipped`` fails loudly rather than answering wrongly.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 04:30:00
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The values as this revision knows them (models may add values in later revisions).
CHECKS = {
    "sweep_runs": (
        "ck_sweep_runs_status",
        "status",
        ("running", "finished", "skipped", "abandoned"),
    ),
    "predictions": ("ck_predictions_status", "status", ("queued", "ok", "failed", "deferred")),
    "model_versions": ("ck_model_versions_role", "role", ("serving", "candidate", "retired")),
    "model_promotions": (
        "ck_model_promotions_action",
        "action",
        ("first", "promote", "rollback"),
    ),
}


def upgrade() -> None:
    with _sqlite_foreign_keys_off():
        for table, (name, column, values) in CHECKS.items():
            with op.batch_alter_table(table) as batch_op:
                if table == "sweep_runs":
                    batch_op.alter_column("skipped", new_column_name="known")
                batch_op.create_check_constraint(
                    name, f"{column} IN ({', '.join(repr(v) for v in values)})"
                )


def downgrade() -> None:
    with _sqlite_foreign_keys_off():
        for table, (name, _, _) in CHECKS.items():
            with op.batch_alter_table(table) as batch_op:
                batch_op.drop_constraint(name, type_="check")
                if table == "sweep_runs":
                    batch_op.alter_column("known", new_column_name="skipped")


@contextmanager
def _sqlite_foreign_keys_off() -> Iterator[None]:
    """SQLite cannot add a constraint to a table: batch mode copies the table into a new one
    and drops the old, and with foreign keys enforced (refund_sorter.db turns them on)
    dropping a table other rows reference fails. They are off meanwhile: a pragma SQLite
    heeds only outside a transaction. The copies keep every row, so no reference breaks."""
    if op.get_bind().dialect.name != "sqlite":
        yield
        return
    with op.get_context().autocommit_block():
        op.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        with op.get_context().autocommit_block():
            op.execute("PRAGMA foreign_keys=ON")
