"""``refund-sorter flower``, the documented way to start Flower: never without credentials,
on 127.0.0.1 unless told otherwise, and 401 for anyone without the password; and the
events a worker process sends it, through one dispatcher kept from batch to batch."""

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sweep_support import REPO_ROOT, service_env

pytestmark = pytest.mark.model

REFUND_SORTER = str(Path(sys.executable).parent / "refund-sorter")
PASSWORD = "s3cret-flower"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(settings, credentials: str | None) -> dict[str, str]:
    env = {k: v for k, v in service_env(settings).items() if not k.startswith("FLOWER_")}
    if credentials is not None:
        env["REFUND_SORTER_FLOWER_BASIC_AUTH"] = credentials
    return env


def status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:  # not listening (yet)
        return 0


def listening_on(port: int) -> set[str]:
    """The local addresses with a socket listening on ``port`` (Linux /proc/net)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
                if table == "tcp":
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add(f"ipv6 {address}")
    return found


@pytest.mark.parametrize("credentials", [None, "", "ops", "ops:"], ids=repr)
def test_flower_refuses_to_start_without_credentials(make_settings, credentials):
    port = free_port()

    result = subprocess.run(
        [REFUND_SORTER, "flower", "--port", str(port)],
        env=flower_env(make_settings(), credentials),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "REFUND_SORTER_FLOWER_BASIC_AUTH" in result.stderr
    assert "Traceback" not in result.stderr and "Visit me" not in result.stderr
    assert listening_on(port) == set()


@pytest.mark.services
def test_flower_listens_on_localhost_only_and_asks_for_the_password(
    make_settings, broker_url, tmp_path
):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115 (closed below)
    flower = subprocess.Popen(
        [REFUND_SORTER, "flower", "--port", str(port)],
        env=flower_env(make_settings(broker_url=broker_url), f"ops:{PASSWORD}"),
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while status(f"{base}/healthcheck") != 200:
            assert flower.poll() is None and time.monotonic() < deadline, (
                tmp_path / "flower.log"
            ).read_text()
            time.sleep(0.5)

        assert listening_on(port) == {"127.0.0.1"}
        for page in ("/", "/workers", "/tasks", "/tasks/datatable", "/api/tasks", "/api/workers"):
            assert status(base + page) == 401, page
            assert status(base + page, "ops:wrong") == 401, page
        assert status(f"{base}/tasks", f"ops:{PASSWORD}") == 200
        # The password is not on Flower's command line, where any local user could read it.
        command_line = Path(f"/proc/{flower.pid}/cmdline").read_bytes()
        assert b"flower" in command_line and PASSWORD.encode() not in command_line
    finally:
        flower.terminate()
        flower.wait(timeout=20)
        log.close()


def test_a_dispatcher_that_failed_to_send_is_made_again_for_the_next_batch(monkeypatch):
    from types import SimpleNamespace

    import worker.events
    from refund_sorter.messages import WorkItem
    from worker.pipeline import BatchOutcome

    made, sent = [], []

    def dispatcher(connection, hostname, **options):
        def flush():
            if len(made) == 1:
                raise ConnectionError("the broker went away")
            sent.append(len(made))

        made.append(connection)
        return SimpleNamespace(
            send=lambda kind, **fields: None, flush=flush, pid=os.getpid(), connection=connection
        )

    monkeypatch.setattr(worker.events, "_held", {})
    monkeypatch.setattr(worker.events.app.events, "Dispatcher", dispatcher)
    assert worker.events.app.conf.worker_send_task_events  # as the workers run
    item = WorkItem("/in/a.jpg", "ab" * 32, "m1")
    request = SimpleNamespace(id="t1", args=[item.as_args()], hostname="w1@test")
    report = [(request, [item], [])]

    with pytest.raises(ConnectionError):
        worker.events.report_to_flower("classify", report, BatchOutcome(), 0.1)
    worker.events.report_to_flower("classify", report, BatchOutcome(), 0.1)
    worker.events.report_to_flower("classify", report, BatchOutcome(), 0.1)

    assert len(made) == 2 and sent == [2, 2]
    assert made[0] is not made[1]  # a fresh connection, the broken one released
