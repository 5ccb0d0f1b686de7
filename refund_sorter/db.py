"""Database engine, sessions and migrations (infrastructure only; tables live in ``models``)."""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from refund_sorter.errors import UserError
from refund_sorter.redact import redact

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain PostgreSQL URLs (SQLAlchemy would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@lru_cache
def get_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the exporter read while a worker writes; foreign keys are off by default.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@lru_cache
def session_factory(url: str) -> sessionmaker[Session]:
    """One session factory (and engine) per database URL and process."""
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def statement_by_statement(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose statements each commit on their own (autocommit): no BEGIN, and no
    COMMIT or ROLLBACK to wait for. For reads, each of which sees the database as of its own
    start in any case (READ COMMITTED), and for one statement on a row that every worker
    updates, which then holds its lock no longer than the statement itself."""
    with sessions() as session:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


def dispose(url: str) -> None:
    """Close the process's connections to ``url`` and forget its engine."""
    get_engine(url).dispose()
    get_engine.cache_clear()
    session_factory.cache_clear()


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    try:
        command.upgrade(alembic_config(url), revision)
    except OperationalError as exc:
        raise UserError(redact(f"cannot reach the database {url}: {exc.orig}")) from None


def check_schema(url: str) -> None:
    """Fail with a plain message when the database is unreachable or not migrated."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    try:
        with get_engine(url).connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise UserError(redact(f"cannot reach the database {url}: {exc.orig}")) from None
    if current != head:
        raise UserError(
            f"the database {redact(url)} is at schema {current or 'none'}, not {head}: "
            "run `refund-sorter db upgrade` first"
        )
