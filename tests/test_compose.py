"""compose.yaml and the Dockerfile describe the stack the README promises, with settings
the code actually reads (no Docker engine is needed to check that)."""

import re
from pathlib import Path

import yaml

from refund_sorter.config import Settings
from refund_sorter.messages import CLASSIFY_QUEUE, SWEEP_QUEUE

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
    } <= set(SERVICES)


def test_services_run_the_celery_app_on_the_right_queues():
    def command(name):
        return " ".join(SERVICES[name]["command"])

    assert command("migrate") == "refund-sorter db upgrade"
    assert command("beat").startswith("celery -A worker beat")
    assert command("flower").startswith("celery -A worker flower")
    assert f"-Q {SWEEP_QUEUE}" in command("producer")
    for name in ("worker", "gpu-worker"):
        assert f"-Q {CLASSIFY_QUEUE}" in command(name)
    assert "--pool solo" in command("gpu-worker")


def test_roles_without_the_model_use_the_image_without_pytorch():
    assert SERVICES["migrate"]["build"]["target"] == "base"
    for name in ("producer", "beat", "flower"):
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


def test_flower_requires_a_password_and_stays_on_localhost():
    flower = SERVICES["flower"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert ":?" in flower["environment"]["FLOWER_BASIC_AUTH"]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


def test_services_wait_for_healthy_dependencies():
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("producer", "worker", "beat"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
