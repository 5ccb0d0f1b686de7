"""compose.yaml and the Dockerfile describe the stack the README promises, with settings
the code actually reads, and a real compose implementation accepts the file (no Docker
engine is needed to check that)."""

import os
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml

from refund_sorter.celery_app import SorterCelery
from refund_sorter.config import Settings
from refund_sorter.messages import CLASSIFY_QUEUE, COUNTER_QUEUE, SWEEP_QUEUE

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_every_role_has_a_service():
    assert {
        "postgres",
        "redis",
        "migrate",
        "producer",
        "worker",
        "gpu-worker",
        "beat",
        "flower",
        "review",
        "metrics",
        "api",
        "counter-worker",
    } <= set(SERVICES)


def test_services_run_the_celery_app_on_the_right_queues():
    def command(name):
        return " ".join(SERVICES[name]["command"])

    assert command("migrate") == "refund-sorter db upgrade"
    assert command("beat").startswith("celery -A worker beat")
    assert command("flower").startswith("refund-sorter flower")
    assert command("review").startswith("refund-sorter review-server")
    assert command("metrics").startswith("refund-sorter metrics-server")
    assert command("api").startswith("refund-sorter api-server")
    assert f"-Q {SWEEP_QUEUE}" in command("producer")
    for name in ("worker", "gpu-worker"):
        assert f"-Q {CLASSIFY_QUEUE},{COUNTER_QUEUE}" in command(name)
    assert f"-Q {COUNTER_QUEUE} " in command("counter-worker")
    assert "--pool solo" in command("gpu-worker")


def test_roles_without_the_model_use_the_image_without_pytorch():
    assert SERVICES["migrate"]["build"]["target"] == "base"
    for name in ("producer", "beat", "flower", "review", "metrics", "api"):
        assert SERVICES[name]["image"] == "refund-sorter:base"
    assert SERVICES["worker"]["build"]["target"] == "worker"
    targets = re.findall(r"^FROM \S+ AS (\w+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert targets == ["base", "worker"]


def test_every_setting_given_to_a_service_exists():
    known = {f"REFUND_SORTER_{name.upper()}" for name in Settings.model_fields}
    for name, service in SERVICES.items():
        env = service.get("environment") or {}
        given = {key for key in env if key.startswith("REFUND_SORTER_")}
        assert given <= known, f"{name}: unknown settings {given - known}"


def test_every_role_that_reads_the_model_store_mounts_the_same_volume():
    store = COMPOSE["x-env"]["REFUND_SORTER_MODEL_STORE"]
    for name in ("producer", "worker", "counter-worker", "gpu-worker", "review", "api"):
        assert SERVICES[name]["environment"]["REFUND_SORTER_MODEL_STORE"] == store
        assert f"models:{store}" in SERVICES[name]["volumes"], name
    assert "models" in COMPOSE["volumes"]
    # A new named volume takes the owner of the image's folder it is mounted on.
    assert re.search(r"chown sorter .*/models", (ROOT / "Dockerfile").read_text())


def test_flower_requires_a_password_and_stays_on_localhost():
    flower = SERVICES["flower"]
    assert flower["environment"]["REFUND_SORTER_FLOWER_BASIC_AUTH"].startswith(
        "${FLOWER_BASIC_AUTH:?"
    )
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


def test_the_review_desk_requires_reviewers_and_a_key_and_stays_on_localhost():
    review = SERVICES["review"]
    env = review["environment"]
    assert env["REFUND_SORTER_REVIEWERS"].startswith("${REVIEWERS:?")
    assert env["REFUND_SORTER_REVIEW_SECRET_KEY"].startswith("${REVIEW_SECRET_KEY:?")
    assert "REFUND_SORTER_ENVIRONMENT" not in env  # never development
    assert all(port.startswith("127.0.0.1:") for port in review["ports"])
    assert review["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_metrics_endpoint_waits_for_migrations_and_stays_on_localhost():
    metrics = SERVICES["metrics"]
    assert metrics["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert metrics["ports"] == ["127.0.0.1:${METRICS_PORT:-9808}:9808"]
    assert metrics["environment"]["REFUND_SORTER_METRICS_BASIC_AUTH"] == "${METRICS_BASIC_AUTH:-}"


def test_the_api_waits_for_migrations_and_the_broker_and_stays_on_localhost():
    api = SERVICES["api"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["ports"] == ["127.0.0.1:${API_PORT:-8100}:8100"]
    # Its photos in the volume the workers file them from.
    assert "data:/data" in api["volumes"] and "data:/data" in SERVICES["worker"]["volumes"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


def test_redis_requires_a_password_and_every_role_uses_it():
    redis = SERVICES["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert "ports" not in redis  # reachable only from the stack's own network
    for name, service in SERVICES.items():
        url = (service.get("environment") or {}).get("REFUND_SORTER_BROKER_URL")
        if name not in ("postgres", "redis"):
            assert url.startswith("redis://:${REDIS_PASSWORD:?"), name


def test_services_wait_for_healthy_dependencies():
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("producer", "worker", "beat"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"


# What an operator must set; each is required by the file itself (${VAR:?message}).
SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "REDIS_PASSWORD": "redis-secret",
    "FLOWER_BASIC_AUTH": "ops:flower-secret",
    "REVIEWERS": "anna:scrypt.32768.8.3." + "1" * 32 + "." + "2" * 64,
    "REVIEW_SECRET_KEY": "review-secret-of-32-characters-x",
}


def docker_compose_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    """``docker-compose config``: interpolates and validates the file, no engine needed."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not installed (bash tests/setup-machine.sh installs it)",
            pytrace=False,
        )
    return subprocess.run(
        [exe, "--file", str(ROOT / "compose.yaml"), "--project-directory", str(ROOT), "config"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.compose
def test_docker_compose_accepts_the_file_with_its_secrets_set():
    result = docker_compose_config(SECRETS)

    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["redis"]["command"][-2:] == ["--requirepass", "redis-secret"]
    for name in (
        "migrate",
        "producer",
        "worker",
        "gpu-worker",
        "beat",
        "flower",
        "review",
        "metrics",
        "api",
    ):
        env = services[name]["environment"]
        assert env["REFUND_SORTER_BROKER_URL"] == "redis://:redis-secret@redis:6379/0", name
    assert services["flower"]["environment"]["REFUND_SORTER_FLOWER_BASIC_AUTH"] == (
        "ops:flower-secret"
    )
    # Published on the host's loopback, at the documented ports unless told otherwise.
    for name, port in (("flower", 5555), ("metrics", 9808), ("review", 8000), ("api", 8100)):
        assert services[name]["ports"] == [f"127.0.0.1:{port}:{port}/tcp"], name
    review = services["review"]["environment"]
    assert review["REFUND_SORTER_REVIEWERS"] == SECRETS["REVIEWERS"]
    assert review["REFUND_SORTER_REVIEW_SECRET_KEY"] == SECRETS["REVIEW_SECRET_KEY"]
    assert Settings(**{k.removeprefix("REFUND_SORTER_").lower(): v for k, v in review.items()})


@pytest.mark.compose
def test_the_published_ports_can_be_moved():
    ports = {"FLOWER_PORT": "15555", "METRICS_PORT": "19808", "REVIEW_PORT": "18000"}
    result = docker_compose_config({**SECRETS, **ports, "API_PORT": "18100"})

    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["flower"]["ports"] == ["127.0.0.1:15555:5555/tcp"]
    assert services["metrics"]["ports"] == ["127.0.0.1:19808:9808/tcp"]
    assert services["review"]["ports"] == ["127.0.0.1:18000:8000/tcp"]
    assert services["api"]["ports"] == ["127.0.0.1:18100:8100/tcp"]


@pytest.mark.compose
@pytest.mark.parametrize("missing", SECRETS)
def test_docker_compose_refuses_the_file_without_a_secret(missing):
    result = docker_compose_config({k: v for k, v in SECRETS.items() if k != missing})

    assert result.returncode != 0
    assert f"set {missing}" in result.stderr


def test_the_documented_broker_url_between_machines_verifies_the_certificate():
    (url,) = re.findall(r"'(rediss://\S+)'", (ROOT / "docs" / "deployment.md").read_text())
    app = SorterCelery(Settings(broker_url=url), set_as_current=False)
    with app.connection() as conn:
        assert conn.transport_cls == "rediss"
        assert conn.ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
        assert conn.ssl["ssl_ca_certs"].endswith(".pem")
        assert "PASSWORD" not in conn.as_uri()
    app.close()
