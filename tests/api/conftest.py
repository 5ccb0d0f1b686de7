"""Fixtures for the returns counter's API: the sweep tests' PostgreSQL database, Redis
database, tiny model and settings (``tests/sweep/conftest.py``, taken as they are, under
the same names, which the marker guard in tests/conftest.py knows)."""

import importlib.util
import sys
from pathlib import Path

import pytest

SWEEP_TESTS = Path(__file__).resolve().parents[1] / "sweep"
sys.path.insert(0, str(SWEEP_TESTS))
pytest.register_assert_rewrite("sweep_support", "api_support")

_spec = importlib.util.spec_from_file_location("sweep_fixtures", SWEEP_TESTS / "conftest.py")
_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sweep)
pg_url = _sweep.pg_url
broker_url = _sweep.broker_url
tiny_model = _sweep.tiny_model
classifier = _sweep.classifier
outcome_failed = _sweep.outcome_failed
pytest_runtest_makereport = _sweep.pytest_runtest_makereport
make_settings = _sweep.make_settings
redis_client = _sweep.redis_client
producer_app = _sweep.producer_app
fresh_pg_url = _sweep.fresh_pg_url
