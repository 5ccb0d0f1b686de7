"""The queue for real: the producer publishes to Redis, two ``celery -A worker worker``
processes classify in batches and write to PostgreSQL, and the sweep finishes by itself.

The two workers start once for the module (the model loads once per process, as in
production) and are stopped, with their logs printed when a test failed, at the end.
"""

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from celery import Celery
from sweep_support import (
    Incoming,
    WorkerProcess,
    add_images,
    add_unreadable,
    all_predictions,
    build_settings,
    check_finished_sweep,
    count_predictions,
    service_env,
    wait_for_run,
    wait_for_workers,
)

from producer.sweep import run_sweep
from refund_sorter.celery_app import publish
from refund_sorter.messages import IMAGES_PER_TASK

pytestmark = [pytest.mark.services, pytest.mark.model]

BATCH_SIZE = 4
BATCH_LINE = re.compile(r"batch of (\d+) images: (\d+) ok, (\d+) failed, (\d+) ignored")


@pytest.fixture(scope="module")
def settings(tmp_path_factory, pg_url, broker_url, tiny_model):
    home = tmp_path_factory.mktemp("celery") / "home"
    return build_settings(
        home,
        pg_url,
        tiny_model,
        broker_url=broker_url,
        batch_size=BATCH_SIZE,
        batch_max_wait=0.5,
        torch_threads=1,
    )


@pytest.fixture(scope="module")
def workers(settings, tmp_path_factory):
    logs = tmp_path_factory.mktemp("worker-logs")
    env = service_env(settings)
    started: list[WorkerProcess] = []
    ping = Celery("refund_sorter-test-ping", broker=settings.broker_url, set_as_current=False)
    try:
        for name in ("w1", "w2"):
            started.append(WorkerProcess(f"{name}@refund-sorter-test", env, logs / f"{name}.log"))
        wait_for_workers(ping, started)
        yield started
    finally:
        ping.close()
        for worker in started:
            worker.stop()


@pytest.fixture
def live_workers(workers, outcome_failed):
    yield workers
    if outcome_failed():
        for worker in workers:
            print(worker.describe(tail=20000))


def batches_since(workers, offsets) -> dict[str, list[tuple[int, ...]]]:
    """The ``batch of`` lines each worker logged since ``offsets``."""
    found = defaultdict(list)
    for w in workers:
        for match in BATCH_LINE.finditer(w.log()[offsets[w.name] :]):
            found[w.name].append(tuple(int(g) for g in match.groups()))
    return found


def test_workers_classify_a_sweep_published_to_redis(
    settings, live_workers, producer_app, tiny_model
):
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 50, seed=21)
    add_unreadable(incoming, seed=21)

    report = run_sweep(settings, dispatch=publish, trigger="manual")

    assert report.run.status == "running"
    assert report.run.enqueued == 51  # the 50 images and the truncated JPEG
    assert {str(p.name) for p, _ in report.failed} == {"shopping-list-21.jpg", "empty-21.jpg"}
    run = wait_for_run(settings, report.run.id, timeout=120, logs=live_workers)
    assert run.trigger == "manual"
    rows = check_finished_sweep(settings, run.id, incoming, tiny_model.taxonomy)
    assert {p.needs_review for p in rows if p.status == "ok"} == {True, False}

    # The next sweep finds nothing to do and publishes nothing.
    n_rows = count_predictions(settings)
    again = run_sweep(settings, dispatch=publish, trigger="manual")
    assert (again.run.status, again.run.found, again.run.enqueued) == ("finished", 0, 0)
    assert again.enqueued == []
    assert count_predictions(settings) == n_rows


def test_two_workers_share_the_queue_and_classify_each_image_once(
    settings, live_workers, producer_app, tiny_model
):
    offsets = {w.name: len(w.log()) for w in live_workers}
    n_rows = count_predictions(settings)
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 5 * IMAGES_PER_TASK, seed=31)  # five tasks

    report = run_sweep(settings, dispatch=publish, trigger="manual")
    run = wait_for_run(settings, report.run.id, timeout=120, logs=live_workers)

    check_finished_sweep(settings, run.id, incoming, tiny_model.taxonomy)
    rows = all_predictions(settings)
    assert len(rows) == n_rows + 5 * IMAGES_PER_TASK
    assert len({(p.content_hash, p.model_version) for p in rows}) == len(rows)

    # The log line follows the commit that finished the sweep: give it a moment.
    deadline = time.monotonic() + 15
    while True:
        batches = batches_since(live_workers, offsets)
        done = sum(b[1] for per_worker in batches.values() for b in per_worker)
        if done >= 5 * IMAGES_PER_TASK or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(batches) == {w.name for w in live_workers}, f"only {set(batches)} took work"
    every = [b for per_worker in batches.values() for b in per_worker]
    # Each message was handled exactly once, a whole task per batch: the batch size (4) is
    # less than a task holds.
    assert [size for size, *_ in every] == [IMAGES_PER_TASK] * 5
    assert sum(ok for _, ok, _, _ in every) == 5 * IMAGES_PER_TASK
    assert all(failed == ignored == 0 for _, _, failed, ignored in every)


def _get(url: str, auth: str | None = None):
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except urllib.error.URLError:  # not listening yet
        return 0, None


def test_flower_shows_the_workers_and_their_tasks_behind_basic_auth(
    settings, live_workers, producer_app, tmp_path
):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**service_env(settings), "REFUND_SORTER_FLOWER_BASIC_AUTH": "ops:s3cret"}
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115 (closed below)
    flower = subprocess.Popen(  # as docs/deployment.md starts it
        [str(Path(sys.executable).parent / "refund-sorter"), "flower", "--port", str(port)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        workers: dict = {}
        while time.monotonic() < deadline:
            status, workers = _get(f"{base}/api/workers?refresh=1", "ops:s3cret")
            if status == 200 and {w.name for w in live_workers} <= set(workers or {}):
                break
            time.sleep(1)
        assert {w.name for w in live_workers} <= set(workers or {}), (
            tmp_path / "flower.log"
        ).read_text()
        assert _get(f"{base}/api/workers")[0] == 401
        assert _get(f"{base}/api/workers", "ops:wrong")[0] == 401

        incoming = Incoming(settings.incoming_dir)
        add_images(incoming, 6, seed=41)
        report = run_sweep(settings, dispatch=publish, trigger="manual")
        wait_for_run(settings, report.run.id, timeout=120, logs=live_workers)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _, tasks = _get(f"{base}/api/tasks?taskname=refund_sorter.classify", "ops:s3cret")
            if len(tasks or {}) >= 1:
                break
            time.sleep(1)
        assert tasks, "Flower saw no classify task"
        assert {t["name"] for t in tasks.values()} == {"refund_sorter.classify"}
    finally:
        flower.terminate()
        flower.wait(timeout=20)
        log.close()


def test_a_default_worker_shares_the_cores_out_among_its_pool_processes(settings, tmp_path):
    """Unless REFUND_SORTER_TORCH_THREADS is set, each of N pool processes gets cores / N
    PyTorch threads (at least one): a default worker never runs more threads than cores."""
    env = service_env(settings.model_copy(update={"torch_threads": 0}))
    worker = WorkerProcess("w3@refund-sorter-test", env, tmp_path / "w3.log", processes=2)
    try:
        deadline = time.monotonic() + 90
        while worker.log().count("loaded model") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        expected = f"with {max(1, os.cpu_count() // 2)} threads"
        assert worker.log().count(expected) == 2, worker.describe()
        # Each process names the runtime it runs the model in.
        log = worker.log()
        assert log.count(" in openvino ") + log.count(" in torch ") == 2, worker.describe()
    finally:
        worker.stop()
