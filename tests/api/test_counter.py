"""The returns counter's API for real: HTTP requests to a ``refund-sorter api-server``
process, a Celery worker process, PostgreSQL and Redis.

A photo is classified by the night's pipeline and answered: its row in today's counter day,
its file in processed/counter/; the same photo again is answered from its row, as is a
night's photo, and a night's photo not yet classified is classified once. Bad tokens and
bad bodies get their code and store nothing. A worker killed while it holds a counter photo
leaves the request answered 504 with a queued row, which the stall check hands to the next
worker. The API process never loads PyTorch.
"""

import os
import signal
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from api_support import (
    COUNTER_SETTINGS,
    REFUND_SORTER,
    ApiServer,
    counter_env,
    wait_until_listening,
)
from sqlalchemy import select
from sweep_support import (
    REPO_ROOT,
    Incoming,
    ServiceProcess,
    WorkerProcess,
    add_images,
    all_predictions,
    build_settings,
    files_under,
    free_port,
    get_run,
    image_bytes,
    local_sweep,
    service_env,
    sha256,
    wait_for_workers,
)

from models import CounterRequest, ItemStatus, SweepStatus
from producer.sweep import run_sweep
from refund_sorter.celery_app import SorterCelery
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.messages import ANSWERED_CHANNEL, COUNTER_QUEUE

pytestmark = [pytest.mark.services, pytest.mark.model]


class Stack:
    """The module's settings, worker and API server."""

    def __init__(self, settings: Settings, home: Path) -> None:
        self.settings, self.home = settings, home
        self.app = SorterCelery(Settings(broker_url=settings.broker_url), set_as_current=False)
        self.workers: list[WorkerProcess] = []
        self.worker = self.start_worker()
        port = free_port()
        argv = [REFUND_SORTER, "api-server", "--port", str(port)]
        log = home / "api.log"
        self.api_process = ServiceProcess("api-server", argv, counter_env(settings), log)
        url = f"http://127.0.0.1:{port}"
        wait_until_listening(self.api_process, url)
        self.api = ApiServer(self.api_process, url, settings)

    def start_worker(self) -> WorkerProcess:
        name = f"w{len(self.workers)}@counter-test"
        worker = WorkerProcess(name, service_env(self.settings), self.home / f"{name}.log")
        self.workers.append(worker)
        wait_for_workers(self.app, [worker])
        self.worker = worker
        return worker

    def logs(self) -> str:
        return "\n".join(p.describe(tail=8000) for p in [*self.workers, self.api_process])

    def stop(self) -> None:
        for process in [*self.workers, self.api_process]:
            process.stop()
        self.app.close()


@pytest.fixture(scope="module")
def stack(pg_url, broker_url, tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("counter")
    settings = build_settings(
        home / "home", pg_url, tiny_model, broker_url=broker_url, **COUNTER_SETTINGS
    )
    built = Stack(settings, home)
    yield built
    built.stop()


@pytest.fixture(autouse=True)
def logs_on_failure(request, stack, outcome_failed):
    yield
    if outcome_failed():
        print(stack.logs())


def photo(seed: int, suffix: str = ".jpg") -> bytes:
    return image_bytes(np.random.default_rng(seed), suffix)


def multipart(data: bytes, name: str = "../../etc/passwd") -> tuple[bytes, dict]:
    """A multipart form with the photo as its one file, under a hostile file name."""
    boundary = "counter-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="{name}"'
            "\r\nContent-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def rows(settings: Settings, content_hash: str):
    return [p for p in all_predictions(settings) if p.content_hash == content_hash]


def requests_of(settings: Settings, prediction_id: int) -> list[str]:
    with session_factory(settings.database_url)() as session:
        return sorted(
            session.scalars(
                select(CounterRequest.token).where(CounterRequest.prediction_id == prediction_id)
            )
        )


def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    """The worker moves the file just after the commit the answer reads."""
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_photo_is_classified_filed_and_then_answered_from_its_row(stack, tiny_model):
    settings, api = stack.settings, stack.api
    data = photo(1)
    content_hash = sha256(data)

    first = api.classify(data, headers={"Content-Type": "image/jpeg"})

    assert first.status == 200, first.body
    assert first.headers["cache-control"] == "no-store"
    answer = first.json
    assert answer["status"] == "ok" and answer["known"] is False
    assert answer["content_hash"] == content_hash
    assert answer["model_version"] == tiny_model.version
    assert answer["main_category"] in ("bottoms", "tops")
    assert answer["guesses"][0]["sub_category"] == answer["sub_category"]
    assert len(answer["guesses"]) == 3
    assert 0 < answer["sub_confidence"] <= answer["main_confidence"] <= 1 + 1e-6
    assert answer["needs_review"] == (answer["sub_confidence"] < settings.review_threshold)
    [row] = rows(settings, content_hash)
    assert (row.id, row.status) == (answer["id"], ItemStatus.OK)
    day = get_run(settings, row.sweep_run_id)
    assert (day.status, day.trigger) == (SweepStatus.COUNTER, "counter")
    assert day.succeeded >= 1
    # Filed as a night's photo is, under its content's name: the row says where.
    assert Path(row.original_path) == settings.counter_dir.absolute() / f"{content_hash}.jpg"
    assert Path(row.final_path) == settings.processed_dir.absolute() / "counter" / (
        f"{content_hash}.jpg"
    )
    wait_for_file(Path(row.final_path))
    assert sha256(Path(row.final_path).read_bytes()) == content_hash
    assert not Path(row.original_path).exists()
    assert requests_of(settings, row.id) == ["anna"]

    # The same photo again, as a multipart form from another client: answered from its row.
    body, headers = multipart(data)
    again = api.classify(body, client="ben", headers=headers)

    assert again.status == 200, again.body
    assert again.json["known"] is True and again.json["id"] == row.id
    assert {k: v for k, v in again.json.items() if k not in ("known", "seconds")} == {
        k: v for k, v in answer.items() if k not in ("known", "seconds")
    }
    assert len(rows(settings, content_hash)) == 1
    assert requests_of(settings, row.id) == ["anna", "ben"]
    assert files_under(settings.counter_dir) == {}
    assert not (settings.home / "etc").exists()

    # Each client reads the rows it sent, and only those.
    assert api.request("GET", f"/v1/predictions/{row.id}").json["status"] == "ok"
    assert api.request("GET", f"/v1/predictions/{row.id}", client="carl").status == 404
    assert api.request("GET", "/v1/predictions/999999").status == 404


def test_the_worker_announces_the_rows_it_wrote_to_the_waiting_requests(stack):
    """The request is woken by the worker's word on the answers channel, which names the
    photo's content, rather than finding its row by looking again and again."""
    import redis

    listener = redis.Redis.from_url(stack.settings.broker_url).pubsub(
        ignore_subscribe_messages=True
    )
    listener.subscribe(ANSWERED_CHANNEL)
    try:
        data = photo(11)
        answer = stack.api.classify(data, headers={"Content-Type": "image/jpeg"})
        assert answer.status == 200, answer.body
        heard = []
        deadline = time.monotonic() + 10
        while sha256(data) not in heard and time.monotonic() < deadline:
            message = listener.get_message(timeout=1)
            if message is not None:
                heard += message["data"].decode().split()
    finally:
        listener.close()

    assert sha256(data) in heard


def test_no_valid_token_is_401_and_nothing_is_stored(stack):
    api, settings = stack.api, stack.settings
    before = len(all_predictions(settings))
    data = photo(2)
    for headers in ({}, {"Authorization": "Bearer rs_" + "x" * 43}, {"Authorization": "Basic x"}):
        response = api.classify(data, client=None, headers=headers)
        assert response.status == 401, response.body
        assert "token" in response.json["detail"]
        assert response.headers.get("www-authenticate") == "Bearer"
    # A revoked token is refused from its next request on.
    from refund_sorter import crud

    api.token("dora")
    with session_factory(settings.database_url).begin() as session:
        assert crud.revoke_api_token(session, name="dora")
    assert api.classify(data, client="dora").status == 401
    assert len(all_predictions(settings)) == before
    assert files_under(settings.counter_dir) == {}


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, in a few hundred bytes: a
    decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_bad_bodies_get_their_code_and_a_plain_reason_and_store_nothing(stack):
    api, settings = stack.api, stack.settings
    before = len(all_predictions(settings))
    jpeg = photo(3)
    limit = settings.api_max_bytes
    cases = {
        "oversized": (b"\xff" * (limit + 1), 413, "larger than"),
        # Chunked, with no length: cut off as it arrives.
        "chunked": ((b"\xff" * 10_000 for _ in range(limit // 10_000 + 2)), 413, "larger than"),
        "text": (b"returns slip: 2 shirts, 1 skirt\n", 415, "not an image"),
        "pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", 415, "not an image"),
        "truncated": (jpeg[: len(jpeg) // 2], 422, "truncated"),
        "bomb": (png_claiming(30_000, 30_000), 422, "too large"),
        "empty": (b"", 422, "empty"),
    }
    for name, (body, status, reason) in cases.items():
        response = api.classify(body)
        assert response.status == status, (name, response.body)
        assert reason in response.json["detail"], (name, response.body)
        assert "Traceback" not in response.json["detail"]
    body, headers = multipart(b"a" * 10)
    assert api.classify(body, headers=headers).status == 415
    two = multipart(jpeg)[0].replace(b"--counter-test-boundary--", multipart(jpeg)[0][:-2])
    assert api.classify(two, headers=headers).status == 400
    assert len(all_predictions(settings)) == before
    assert files_under(settings.counter_dir) == {}


def test_the_same_new_photo_from_two_clients_at_once_is_classified_once(stack):
    api, settings = stack.api, stack.settings
    data = photo(4, ".png")
    answers = {}

    def send(client: str) -> None:
        answers[client] = api.classify(data, client=client)

    threads = [threading.Thread(target=send, args=(c,)) for c in ("anna", "ben")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert {a.status for a in answers.values()} == {200}, answers
    assert answers["anna"].json["id"] == answers["ben"].json["id"]
    [row] = rows(settings, sha256(data))
    assert row.status == ItemStatus.OK and row.final_path.endswith(".png")
    assert requests_of(settings, row.id) == ["anna", "ben"]
    wait_for_file(Path(row.final_path))
    processed = files_under(settings.processed_dir)
    assert list(processed.values()).count(sha256(data)) == 1


def test_a_night_s_photo_is_answered_from_its_row_and_one_not_yet_classified_is_done_once(
    stack, classifier
):
    settings, api = stack.settings, stack.api
    incoming = Incoming(settings.incoming_dir)
    [(rel, content_hash)] = add_images(incoming, 1, seed=5).items()
    data = (settings.incoming_dir / rel).read_bytes()
    night = local_sweep(settings, classifier)
    assert night.status == SweepStatus.FINISHED

    known = api.classify(data)

    assert known.status == 200 and known.json["known"] is True
    [row] = rows(settings, content_hash)
    assert (known.json["id"], row.sweep_run_id) == (row.id, night.id)
    assert files_under(settings.counter_dir) == {}

    # A night whose photo is still queued (its message not taken yet): the counter hands it
    # to a counter worker, and both are answered by the one row.
    [(rel, content_hash)] = add_images(incoming, 1, seed=6).items()
    data = (settings.incoming_dir / rel).read_bytes()
    held = []
    queued = run_sweep(settings, dispatch=held.extend, trigger="manual").run

    answer = api.classify(data)

    assert answer.status == 200, answer.body
    [row] = rows(settings, content_hash)
    assert (answer.json["id"], row.sweep_run_id, row.status) == (row.id, queued.id, "ok")
    assert files_under(settings.counter_dir) == {}
    wait_for_file(settings.processed_dir / rel)
    deadline = time.monotonic() + 10
    while get_run(settings, queued.id).status != SweepStatus.FINISHED:
        assert time.monotonic() < deadline, "the night was never finished"
        time.sleep(0.1)
    assert len(held) == 1  # its own message, never published: nothing else to classify


def test_the_rate_limit_is_per_token_and_shared_by_every_api_process(stack):
    api, settings = stack.api, stack.settings
    port = free_port()
    argv = [REFUND_SORTER, "api-server", "--port", str(port)]
    second = ServiceProcess("api-2", argv, counter_env(settings), stack.home / "api-2.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_listening(second, url)
        other = ApiServer(second, url, settings, tokens=api.tokens)
        limit = settings.api_rate_limit
        # The token's requests, taking turns between the two processes: counted together.
        statuses = [(api, other)[i % 2].classify(b"", client="eve").status for i in range(limit)]
        assert statuses == [422] * limit
        for server in (api, other):
            refused = server.classify(b"", client="eve")
            assert refused.status == 429 and "requests this minute" in refused.json["detail"]
            assert int(refused.headers["retry-after"]) >= 1
        assert other.classify(b"", client="fred").status == 422  # another token's own count
    finally:
        second.stop()


def test_health_openapi_metrics_and_no_pytorch_in_the_api_process(stack):
    api = stack.api
    assert api.request("GET", "/healthz", client=None).body == "ok"
    ready = api.request("GET", "/readyz", client=None)
    assert ready.status == 200 and ready.json == {"ready": True, "problems": {}}
    spec = api.request("GET", "/openapi.json", client=None).json
    assert {"/v1/classify", "/v1/predictions/{prediction_id}"} <= set(spec["paths"])
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"image/jpeg", "multipart/form-data"} <= set(body)
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert api.request("GET", "/docs", client=None).status == 200
    metrics = api.request("GET", "/metrics", client=None).body
    assert 'refund_sorter_api_requests_total{endpoint="/v1/classify",status="200"}' in metrics
    assert "refund_sorter_api_request_duration_seconds_bucket" in metrics
    assert "refund_sorter_api_requests_in_flight" in metrics
    # What the server process has loaded: no PyTorch library mapped into it.
    maps = Path(f"/proc/{stack.api_process.proc.pid}/maps").read_text()
    assert "torch" not in maps and "openvino" not in maps


def test_a_worker_killed_holding_a_counter_photo_leaves_a_queued_row_the_stall_check_settles(
    stack, monkeypatch
):
    """The worker takes the message and is killed before it classifies it: the client is
    answered 504 with the row's id, the row stays queued with its file in counter/, and the
    stall check publishes it again for the next worker; nothing is lost."""
    import psutil

    from producer.counter import resume_stalled_counter
    from refund_sorter import celery_app

    settings, api = stack.settings, stack.api
    worker = stack.worker
    children = psutil.Process(worker.proc.pid).children(recursive=True)
    for child in children:  # the pool: the main process still takes messages
        os.kill(child.pid, signal.SIGSTOP)
    data = photo(7)
    answers = []
    sender = threading.Thread(target=lambda: answers.append(api.classify(data)))
    sender.start()
    broker = stack.app.connection_for_write().default_channel.client
    deadline = time.monotonic() + 10
    while not (rows(settings, sha256(data)) and broker.llen(COUNTER_QUEUE) == 0):
        assert time.monotonic() < deadline, "the worker never took the message"
        time.sleep(0.05)
    time.sleep(0.3)  # in the main process's buffer, handed to the stopped pool
    worker.kill()
    sender.join()

    [answer] = answers
    assert answer.status == 504, answer.body
    [row] = rows(settings, sha256(data))
    assert answer.json["id"] == row.id and f"/v1/predictions/{row.id}" in answer.json["detail"]
    assert row.status == ItemStatus.QUEUED
    assert files_under(settings.counter_dir) == {Path(f"{row.content_hash}.jpg"): row.content_hash}
    assert api.request("GET", f"/v1/predictions/{row.id}").json["status"] == "queued"
    assert api.request("GET", "/readyz", client=None).status == 503

    stack.start_worker()
    monkeypatch.setattr(celery_app, "app", stack.app)
    quick = settings.model_copy(update={"sweep_stall_seconds": 0.5})
    time.sleep(0.6)
    published = resume_stalled_counter(
        quick,
        dispatch=lambda items: celery_app.publish(items, queue=COUNTER_QUEUE),
        queue_depth=lambda: celery_app.classify_queue_depth(COUNTER_QUEUE),
    )
    assert published == 1

    deadline = time.monotonic() + 30
    while (read := api.request("GET", f"/v1/predictions/{row.id}")).json["status"] == "queued":
        assert time.monotonic() < deadline, "the photo was never classified"
        time.sleep(0.2)
    assert read.json["status"] == "ok"
    [row] = rows(settings, sha256(data))
    wait_for_file(Path(row.final_path))
    assert files_under(settings.counter_dir) == {}
    assert api.classify(data).json["known"] is True


def test_refund_sorter_api_token_create_list_revoke(stack):
    import subprocess

    env = counter_env(stack.settings)

    def cli(*args) -> subprocess.CompletedProcess:
        argv = [REFUND_SORTER, "api-token", *args]
        return subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True)

    made = cli("create", "portal")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("rs_") and "shown once" in made.stderr
    assert cli("create", "portal").returncode == 1
    assert "portal" in cli("list").stdout
    stack.api.tokens["portal"] = token
    assert stack.api.request("GET", "/v1/predictions/1", client="portal").status == 404
    assert cli("revoke", "portal").returncode == 0
    assert stack.api.request("GET", "/v1/predictions/1", client="portal").status == 401
    assert "error: no live token" in cli("revoke", "portal").stderr
    assert cli("create", "../x").returncode == 1
