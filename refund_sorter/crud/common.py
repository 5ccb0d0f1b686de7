"""What the row writers share: times in UTC whatever the database returns, and an upsert in
the session's SQL dialect."""

from datetime import UTC, datetime

from sqlalchemy import Insert, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def as_utc(value: datetime | None) -> datetime | None:
    """In UTC whatever the database returns: SQLite gives naive UTC values, PostgreSQL
    aware ones in the session's time zone."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def upsert(session: Session, table: Table) -> Insert:
    """An INSERT that takes ``on_conflict_do_update``, in the session's SQL dialect."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
