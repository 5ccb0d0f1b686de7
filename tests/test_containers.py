"""compose.yaml and the Dockerfile, built and run for real with podman: the images built
from a wheelhouse without network (from Debian's packages where no registry answers), every
service up and healthy, the migrations at the latest schema, a night of clothing-small photos
swept inside the stack and classified by the worker container, its rows, CSV and files in
agreement, Flower, the review desk, the metrics endpoint and the API answering, and nothing
lost over `docker-compose down` and `up`. Everything goes through
deploy/containers/stack.sh, as an operator would use it (docs/deployment.md)."""

import csv
import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from refund_sorter.passwords import hash_password

pytestmark = pytest.mark.containers

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "deploy" / "containers" / "stack.sh"
VAL = ROOT.parent / "shared" / "datasets" / "clothing-small" / "val"
PROJECT = "refund-sorter-test"
PHOTOS_PER_CLASS = 2
FLOWER_AUTH = "ops:flower-secret-for-the-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_env() -> dict[str, str]:
    return {
        **os.environ,
        "COMPOSE_PROJECT_NAME": PROJECT,
        "POSTGRES_PASSWORD": "pgsecret",
        "REDIS_PASSWORD": "redissecret",
        "FLOWER_BASIC_AUTH": FLOWER_AUTH,
        "REVIEWERS": f"anna:{hash_password('a password for the test')}",
        "REVIEW_SECRET_KEY": "review-secret-of-32-characters-x",
        # Ports of its own: nothing else on the machine is disturbed, nor disturbs it.
        "FLOWER_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
        "REVIEW_PORT": str(free_port()),
        "API_PORT": str(free_port()),
    }


def stack(env: dict[str, str], *args: str, timeout: int = 900) -> str:
    result = subprocess.run(
        ["bash", str(STACK), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"stack.sh {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def container(service: str) -> str:
    return f"{PROJECT}_{service}_1"


def podman(*args: str, stdin: bytes | None = None) -> str:
    result = subprocess.run(
        ["podman", *args], input=stdin, capture_output=True, timeout=600, env=stack_podman_env()
    )
    assert result.returncode == 0, f"podman {' '.join(args)}:\n{result.stderr.decode()}"
    return result.stdout.decode()


def stack_podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(STACK.parent / "containers.conf")}


def psql(query: str) -> list[list[str]]:
    out = podman(
        "exec", container("postgres"), "psql", "-U", "refund", "-d", "refund_sorter",
        "-At", "-F", "\t", "-c", query,
    )  # fmt: skip
    return [line.split("\t") for line in out.splitlines()]


def in_data(*command: str) -> str:
    """A command in the producer's container, as its user, over the data volume."""
    return podman("exec", container("producer"), *command)


def http_status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def night_photos() -> list[Path]:
    classes = sorted(p for p in VAL.glob("*/*") if p.is_dir())
    assert classes, f"the data set is missing: {VAL}"
    return [photo for c in classes for photo in sorted(c.iterdir())[:PHOTOS_PER_CLASS]]


def photos_tar(photos: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for photo in photos:
            main, sub = photo.parent.parent.name, photo.parent.name
            tar.add(photo, arcname=f"night/{main}-{sub}-{photo.name}")
    return buffer.getvalue()


def what_the_night_left() -> tuple[list[list[str]], list[dict[str, str]], list[str]]:
    rows = psql(
        "SELECT file_name, status, final_path, main_category, sub_category FROM predictions"
        " ORDER BY file_name"
    )
    (export,) = in_data("find", "/data/exports", "-name", "*.csv").split()
    exported = sorted(
        csv.DictReader(io.StringIO(in_data("cat", export))), key=lambda r: r["file_name"]
    )
    processed = sorted(in_data("find", "/data/processed", "-type", "f").split())
    return rows, exported, processed


def test_the_stack_sweeps_a_night_in_containers_and_keeps_it_over_a_restart():
    for tool in ("apt-get", "python3"):
        assert shutil.which(tool), f"{tool} is needed to set the stack up"
    env = stack_env()
    started = time.monotonic()
    built = stack(env, "images", timeout=1500)
    print(built, f"images: {time.monotonic() - started:.0f} s")
    try:
        up = stack(env, "up")

        # Every service up: healthy where it has a check, migrate done.
        states = dict(
            line.split(" ", 1)
            for line in podman(
                "ps", "--all", "--filter", f"label=com.docker.compose.project={PROJECT}",
                "--format", "{{.Names}} {{.Status}}",
            ).splitlines()
        )  # fmt: skip
        services = {name.removeprefix(f"{PROJECT}_").rsplit("_", 1)[0] for name in states}
        assert services == {
            "postgres", "redis", "migrate", "producer", "worker", "counter-worker", "beat",
            "flower", "metrics", "review", "api",
        }, up  # fmt: skip
        for service in ("postgres", "redis", "review", "api"):
            assert states[container(service)].endswith("(healthy)"), states
        assert states[container("migrate")].startswith("Exited (0)"), states
        for service in ("producer", "worker", "counter-worker", "beat", "flower", "metrics"):
            assert states[container(service)].startswith("Up "), states

        head = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()
        assert psql("SELECT version_num FROM alembic_version") == [[head]]

        # A night: photos dropped into the data volume's incoming/, as the producer's user.
        photos = night_photos()
        in_data("mkdir", "-p", "/data/incoming")
        podman(
            "exec", "-i", container("producer"), "tar", "-x", "-C", "/data/incoming",
            stdin=photos_tar(photos),
        )  # fmt: skip
        sweep = in_data("refund-sorter", "sweep", "--wait")

        rows, exported, processed = what_the_night_left()
        assert len(rows) == len(photos), sweep
        assert {status for _, status, *_ in rows} == {"ok"}, rows
        assert [r[0] for r in rows] == [r["file_name"] for r in exported]
        assert [r[2] for r in rows] == [r["final_path"] for r in exported]
        assert sorted(r[2] for r in rows) == processed
        names = {f"{p.parent.parent.name}-{p.parent.name}-{p.name}" for p in photos}
        assert {file_name for file_name, *_ in rows} == names
        for _, _, final_path, main, sub in rows:
            assert final_path.startswith("/data/processed/night/"), final_path
            assert main and sub
        assert in_data("find", "/data/incoming", "-type", "f") == ""

        # The published ports: Flower with its password alone, the desk, metrics, the API.
        flower = f"http://127.0.0.1:{env['FLOWER_PORT']}/"
        assert http_status(flower) == 401
        assert http_status(flower, auth="ops:wrong") == 401
        assert http_status(flower, auth=FLOWER_AUTH) == 200
        assert http_status(f"http://127.0.0.1:{env['REVIEW_PORT']}/healthz") == 200
        assert http_status(f"http://127.0.0.1:{env['API_PORT']}/healthz") == 200
        metrics_url = f"http://127.0.0.1:{env['METRICS_PORT']}/metrics"
        with urllib.request.urlopen(metrics_url, timeout=30) as response:
            assert b"refund_sorter_" in response.read()

        # Down (the named volumes stay) and up again: nothing lost.
        stack(env, "compose", "down")
        stack(env, "up")
        assert what_the_night_left() == (rows, exported, processed)
    finally:
        stack(env, "down", "--volumes")
    assert (
        podman("volume", "ls", "--quiet", "--filter", f"label=com.docker.compose.project={PROJECT}")
        == ""
    )
    assert not (ROOT / "var" / "containers" / PROJECT / "podman.pid").exists()
