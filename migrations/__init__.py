"""Alembic migrations; run them with ``refund-sorter db upgrade``."""
