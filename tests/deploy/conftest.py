"""Fixtures for the deployment files' tests: a PostgreSQL database and a Redis database of
their own, from the sweep tests' helpers."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The sweep tests' helpers: PostgreSQL and Redis databases, processes started as operators do.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
pytest.register_assert_rewrite("sweep_support")
from sweep_support import postgres_database, redis_database  # noqa: E402


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A migrated PostgreSQL database for this test alone."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def broker_url() -> Iterator[str]:
    """A Redis database no one else uses, emptied afterwards."""
    with redis_database() as url:
        yield url
