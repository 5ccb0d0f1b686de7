"""The returns counter: counter days among the sweep runs, API tokens, and the requests
each token sent

A counter day (sweep status ``counter``) groups the photos the counter's HTTP API took on
one day, as a night groups its own; one per day, held by a partial unique index. A token is
kept by name with the SHA-256 of its secret; each request names the token that sent it and
the row that answered it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 11:00:00
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ("running", "finished", "skipped", "abandoned")
AFTER = (*BEFORE, "counter")


def _statuses(values: tuple[str, ...]) -> str:
    return f"status IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with _sqlite_foreign_keys_off(), op.batch_alter_table("sweep_runs") as batch_op:
        batch_op.drop_constraint("ck_sweep_runs_status", type_="check")
        batch_op.create_check_constraint("ck_sweep_runs_status", _statuses(AFTER))
    op.create_index(
        "uq_sweep_runs_one_counter_day",
        "sweep_runs",
        ["started_at"],
        unique=True,
        postgresql_where=sa.text("status = 'counter'"),
        sqlite_where=sa.text("status = 'counter'"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "counter_requests",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "prediction_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("predictions.id"),
            nullable=False,
        ),
        sa.Column("token", sa.String(64), sa.ForeignKey("api_tokens.name"), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_counter_requests_prediction_token", "counter_requests", ["prediction_id", "token"]
    )


def downgrade() -> None:
    op.drop_index("ix_counter_requests_prediction_token", table_name="counter_requests")
    op.drop_table("counter_requests")
    op.drop_table("api_tokens")
    op.drop_index("uq_sweep_runs_one_counter_day", table_name="sweep_runs")
    # The counter's rows go with its tables: its days and their photos (and whatever refers
    # to those photos) cannot be told apart once the status that marks them is gone.
    day = "SELECT id FROM sweep_runs WHERE status = 'counter'"
    photos = f"SELECT id FROM predictions WHERE sweep_run_id IN ({day})"
    for table in ("shadow_predictions", "review_claims", "reviews"):
        op.execute(f"DELETE FROM {table} WHERE prediction_id IN ({photos})")
    op.execute(f"DELETE FROM predictions WHERE sweep_run_id IN ({day})")
    op.execute("DELETE FROM sweep_runs WHERE status = 'counter'")
    with _sqlite_foreign_keys_off(), op.batch_alter_table("sweep_runs") as batch_op:
        batch_op.drop_constraint("ck_sweep_runs_status", type_="check")
        batch_op.create_check_constraint("ck_sweep_runs_status", _statuses(BEFORE))


@contextmanager
def _sqlite_foreign_keys_off() -> Iterator[None]:
    """SQLite cannot change a table's constraint: batch mode copies the table and drops the
    old one, which fails while foreign keys are enforced and rows refer to it. They are off
    meanwhile (a pragma SQLite heeds only outside a transaction), as in revision 0011."""
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
