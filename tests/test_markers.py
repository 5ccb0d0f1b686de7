"""tests/conftest.py's guard: a test that opens PostgreSQL or Redis, starts chromium,
docker-compose, prometheus or promtool, or loads or trains a model, without the marker that
says so, fails; with it, it runs. Checked on a small generated test file run by pytest in a
process of its own, with the real conftest."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

GENERATED = """
import socket
import subprocess

import psycopg
import pytest

BIN = {bin!r}


def redis():
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=5).close()
    except OSError:
        pass  # used all the same: the guard does not care whether a server answered


def postgresql():
    dsn = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
    try:
        psycopg.connect(dsn).close()
    except psycopg.OperationalError:
        pass


def launch(program):
    subprocess.run([f"{{BIN}}/{{program}}", "--version"], check=True)


def test_redis_unmarked():
    redis()


@pytest.mark.services
def test_redis_marked():
    redis()


def test_postgresql_unmarked():
    postgresql()


@pytest.mark.services
def test_postgresql_marked():
    postgresql()


def test_chromium_unmarked():
    launch("chromium")


@pytest.mark.browser
def test_chromium_marked():
    launch("chromium")


def test_docker_compose_unmarked():
    launch("docker-compose")


@pytest.mark.compose
def test_docker_compose_marked():
    launch("docker-compose")


def test_prometheus_unmarked():
    launch("prometheus")


def test_promtool_unmarked():
    launch("promtool")


@pytest.mark.prometheus
def test_prometheus_and_promtool_marked():
    launch("prometheus")
    launch("promtool")


@pytest.fixture
def broker_url():
    return "redis://127.0.0.1:6379/9"  # the sweep tests' fixture of that name hands out Redis


def test_a_server_fixture_unmarked(broker_url):
    pass


@pytest.fixture
def opens_redis():
    redis()


def test_a_fixture_that_opens_redis_unmarked(opens_redis):
    pass


def test_nothing_of_the_sort():
    socket.socketpair()[0].close()


@pytest.fixture
def tiny_model():
    return "tiny.pt"  # the sweep tests' fixture of that name loads a model


def test_a_model_fixture_unmarked(tiny_model):
    pass


def save_and_load(path):
    import torch

    torch.save({{"weight": torch.zeros(2)}}, path)
    return torch.load(path, weights_only=True)


def test_a_model_file_loaded_unmarked(tmp_path):
    save_and_load(tmp_path / "m.pt")


def start_training(data):
    from training.recipe import TrainConfig
    from classifier.train import train
    from refund_sorter.errors import UserError

    (data / "tops" / "shirt").mkdir(parents=True)
    (data / "tops" / "shirt" / "a.png").write_text("not an image")
    with pytest.raises(UserError):
        train(data, data / "m.pt", TrainConfig(device="cpu"), echo=lambda _: None)


def test_a_training_unmarked(tmp_path):
    start_training(tmp_path / "data")


@pytest.mark.model
def test_a_model_fixture_a_model_file_and_a_training_marked(tiny_model, tmp_path):
    save_and_load(tmp_path / "m.pt")
    start_training(tmp_path / "data")


def test_a_model_file_written_but_not_loaded(tmp_path):
    import torch

    torch.save({{"weight": torch.zeros(2)}}, tmp_path / "m.pt")
"""


def test_an_unmarked_test_that_uses_a_server_or_a_program_fails(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Stand-ins: the guard goes by the name.
    for program in ("chromium", "docker-compose", "prometheus", "promtool"):
        (bin_dir / program).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / program).chmod(0o755)
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "test_generated.py").write_text(textwrap.dedent(GENERATED.format(bin=str(bin_dir))))

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_generated.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )

    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "8 failed, 8 passed, 3 errors" in out, out
    for test, what, marker in (
        ("test_redis_unmarked", "Redis (port 6379)", "services"),
        ("test_postgresql_unmarked", "PostgreSQL", "services"),
        ("test_chromium_unmarked", "chromium", "browser"),
        ("test_docker_compose_unmarked", "docker-compose", "compose"),
        ("test_prometheus_unmarked", "prometheus", "prometheus"),
        ("test_promtool_unmarked", "promtool", "prometheus"),
        ("test_a_server_fixture_unmarked", "the fixture broker_url", "services"),
        ("test_a_fixture_that_opens_redis_unmarked", "Redis (port 6379)", "services"),
        ("test_a_model_fixture_unmarked", "the fixture tiny_model", "model"),
        ("test_a_model_file_loaded_unmarked", "a model file (torch.load)", "model"),
        ("test_a_training_unmarked", "a network in training", "model"),
    ):
        message = f"test_generated.py::{test} uses {what} but is not marked {marker!r}"
        assert message in out, out
    assert "test_nothing_of_the_sort" not in out
    assert "test_a_model_file_written_but_not_loaded" not in out
