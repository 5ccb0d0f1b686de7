"""The Prometheus endpoint (``refund-sorter metrics-server``) against PostgreSQL and Redis:
a staged history of sweeps, reviews and broker messages, scraped over HTTP and parsed as
Prometheus parses it; a database or a broker that cannot be reached; basic auth."""

import base64
import hashlib
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sweep_support import REPO_ROOT, service_env

from models import ItemStatus, Prediction, Review, SweepRun, SweepStatus
from monitoring.server import metrics_server
from refund_sorter import crud, drift
from refund_sorter.celery_app import SorterCelery
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.messages import CLASSIFY_QUEUE, CLASSIFY_TASK, SWEEP_TASK, WorkItem, task_args
from review import accuracy

pytestmark = pytest.mark.services

REFUND_SORTER = str(Path(sys.executable).parent / "refund-sorter")
MODEL_BYTES = b"not a real model: the endpoint only hashes the file"
VERSION = hashlib.sha256(MODEL_BYTES).hexdigest()[:12]
CANDIDATE = "c" * 12
NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
CLOSED = "127.0.0.1:1"  # nothing listens on port 1


# ------------------------------------------------------------------------------ helpers


def make_settings(tmp_path: Path, database_url: str, broker_url: str, **overrides) -> Settings:
    model = tmp_path / "model.pt"
    model.write_bytes(MODEL_BYTES)
    return Settings(
        home=tmp_path / "home",
        database_url=database_url,
        broker_url=broker_url,
        model_path=model,
        **overrides,
    )


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The endpoint for ``settings`` in a thread of this process, on a free port."""
    server = metrics_server(settings, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def get(url: str, auth: str | None = None) -> tuple[int, str, dict]:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of one scrape, keyed by (name, labels), as Prometheus reads them."""
    status, text, _ = get(url)
    assert status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((f"refund_sorter_{name}", frozenset(labels.items())))


def names(samples: dict) -> set[str]:
    return {name.removeprefix("refund_sorter_") for name, _ in samples}


# ----------------------------------------------------------------------- a staged history


@dataclass
class Staged:
    last: int  # the newest finished sweep
    last_started: datetime
    running_started: datetime
    abandoned_started: datetime
    oldest_undecided: datetime  # classified_at of the photo waiting longest for the desk


class Stager:
    """Writes sweeps, predictions and reviews the way the sweep and the desk leave them."""

    def __init__(self, session) -> None:
        self.session = session
        self.count = 0

    def sweep(self, status: str, started: datetime, seconds: float | None = None, **counts):
        run = SweepRun(
            status=status,
            trigger="beat",
            model_version=VERSION,
            started_at=started,
            updated_at=started,
            finished_at=None if seconds is None else started + timedelta(seconds=seconds),
            **counts,
        )
        self.session.add(run)
        self.session.flush()
        return run

    def photo(self, run: SweepRun, status: str = ItemStatus.OK, label: str = "", **extra):
        self.count += 1
        main, _, sub = label.partition("/")
        ok = status == ItemStatus.OK
        row = Prediction(
            content_hash=f"{self.count:064x}",
            model_version=VERSION,
            sweep_run_id=run.id,
            status=status,
            file_name=f"img{self.count}.jpg",
            original_path=f"incoming/img{self.count}.jpg",
            main_category=main if ok else None,
            sub_category=sub if ok else None,
            main_confidence=0.5 + (self.count % 50) / 100 if ok else None,
            sub_confidence=0.4 + (self.count % 60) / 100 if ok else None,
            classified_at=run.started_at + timedelta(minutes=10) if status != "queued" else None,
            **extra,
        )
        self.session.add(row)
        self.session.flush()
        return row

    def review(self, photo: Prediction, label: str | None = None, undone: bool = False):
        main, _, sub = (label or f"{photo.main_category}/{photo.sub_category}").partition("/")
        self.session.add(
            Review(
                prediction_id=photo.id,
                reviewer="anna",
                main_category=main,
                sub_category=sub,
                reviewed_at=NOW,
                undone_at=NOW if undone else None,
            )
        )


def stage_history(url: str) -> Staged:
    """Three baseline nights, the last night, a skipped and an abandoned sweep, a running one.

    - baseline nights B1-B3, 10 photos each (6 footwear/shoes, 4 bottomwear/pants), 1, 2
      and 3 flagged (flagged shares 0.1, 0.2, 0.3: mean 0.2); B1's flagged photo is
      undecided, B2's both decided, B3's one decided, one decided and undone, one
      undecided; three audits decided (B2: one right, one wrong; B3: one right);
    - the last night: 8 ok (2 footwear/shoes, 3 bottomwear/pants, 3 topwear/shirts, 2 of
      them flagged, 1 audited), 2 failed, 1 deferred, 4 known, 100 s long;
    - a skipped sweep after it, an abandoned one before B1, and a running sweep now.

    The desk's backlog: 1 (B1) + 2 (B3) + 3 (last night) = 6; the oldest is B1's photo.
    """
    with session_factory(url).begin() as session:
        crud.first_serving(session, version=VERSION, file_name="serving.pt", figures={}, by="ops")
        crud.register_model(
            session, version=CANDIDATE, file_name="candidate.pt", figures={}, by="ops"
        )
        s = Stager(session)
        abandoned = s.sweep(SweepStatus.ABANDONED, NOW - 6 * DAY, seconds=3600, pending=4)
        baseline = []  # each night's photos
        for night, flagged in enumerate((1, 2, 3), start=1):
            run = s.sweep(SweepStatus.FINISHED, NOW - (5 - night) * DAY - DAY, 600, succeeded=10)
            photos = [
                s.photo(run, label="footwear/shoes" if i < 6 else "bottomwear/pants")
                for i in range(10)
            ]
            for photo in photos[:flagged]:
                photo.needs_review = True
            baseline.append(photos)
        p1, p2, p3 = baseline
        oldest = p1[0].classified_at
        s.review(p2[0]), s.review(p2[1])
        s.review(p3[0]), s.review(p3[1], undone=True)
        for photo, label in ((p2[6], None), (p2[7], "topwear/shirts"), (p3[6], None)):
            photo.audited = True
            s.review(photo, label)

        last = s.sweep(
            SweepStatus.FINISHED,
            NOW - DAY,
            seconds=100,
            found=15,
            enqueued=11,
            succeeded=8,
            failed=2,
            known=4,
            deferred=1,
            pending=0,
        )
        labels = ["footwear/shoes"] * 2 + ["bottomwear/pants"] * 3 + ["topwear/shirts"] * 3
        photos = [s.photo(last, label=label) for label in labels]
        photos[0].needs_review = photos[5].needs_review = True
        photos[1].audited = True
        s.photo(last, ItemStatus.FAILED, error="cannot identify image file")
        s.photo(last, ItemStatus.FAILED, error="truncated")
        s.photo(last, ItemStatus.DEFERRED, error="still being written")
        s.sweep(SweepStatus.SKIPPED, NOW - DAY + timedelta(hours=1), seconds=0)

        running = s.sweep(
            SweepStatus.RUNNING,
            NOW - timedelta(minutes=10),
            found=9,
            enqueued=9,
            succeeded=3,
            failed=1,
            pending=5,
        )
        for _ in range(3):
            s.photo(running, label="topwear/shirts")
        s.photo(running, ItemStatus.FAILED, error="empty file")
        for _ in range(5):
            s.photo(running, ItemStatus.QUEUED)
        return Staged(last.id, last.started_at, running.started_at, abandoned.started_at, oldest)


@pytest.fixture(scope="module")
def staged(pg_url) -> Staged:
    return stage_history(pg_url)


@pytest.fixture
def broker_messages(producer_app: SorterCelery, redis_client):
    """Two classify tasks and one sweep task published; one classify task taken by a
    consumer that has not acknowledged it (kombu keeps it in ``unacked`` meanwhile)."""
    item = WorkItem("incoming/a.jpg", "0" * 64, VERSION)
    for _ in range(2):
        producer_app.send_task(CLASSIFY_TASK, args=task_args([item]))
    producer_app.send_task(SWEEP_TASK, kwargs={"trigger": "beat"})
    with producer_app.connection_for_read() as conn, conn.channel() as channel:
        message = channel.basic_get(CLASSIFY_QUEUE, no_ack=False)
        assert message is not None
        assert redis_client.hlen("unacked") == 1
        yield
        # Closing the channel gives the message back to the queue, as a stopped worker's.


# -------------------------------------------------------------------------------- tests


def test_every_series_after_a_staged_night(
    staged, pg_url, broker_url, broker_messages, tmp_path, caplog
):
    settings = make_settings(tmp_path, pg_url, broker_url)
    caplog.set_level(logging.WARNING, logger="monitoring.metrics")
    with serving(settings) as url:
        before = datetime.now(UTC)
        samples = scrape(url)
        after = datetime.now(UTC)

    assert caplog.records == []  # nothing went wrong, nothing logged
    assert value(samples, "database_up") == 1
    assert value(samples, "broker_up") == 1
    assert value(samples, "scrape_duration_seconds") > 0

    # The running sweep shows only in its own series.
    assert value(samples, "sweep_running") == 1
    assert value(samples, "running_sweep_started_timestamp_seconds") == (
        staged.running_started.timestamp()
    )
    running = {"ok": 3, "failed": 1, "queued": 5, "known": 0, "deferred": 0}
    for status, n in running.items():
        assert value(samples, "running_sweep_photos", status=status) == n

    # The last sweep is the newest finished one: not the running one, not the skipped one.
    assert value(samples, "last_sweep_id") == staged.last
    assert value(samples, "last_sweep_started_timestamp_seconds") == staged.last_started.timestamp()
    assert value(samples, "last_sweep_finished_timestamp_seconds") == (
        staged.last_started.timestamp() + 100
    )
    assert value(samples, "last_sweep_duration_seconds") == 100
    last = {"ok": 8, "failed": 2, "queued": 0, "known": 4, "deferred": 1}
    for status, n in last.items():
        assert value(samples, "last_sweep_photos", status=status) == n
    assert value(samples, "last_sweep_flagged_ratio") == 2 / 8
    assert value(samples, "last_sweep_failed_ratio") == 2 / 10
    # The level the failed share alert compares it with: the desk's setting, exported.
    assert value(samples, "failed_ratio_warning") == settings.nights_failed_warning == 0.05
    # The audit targets the accuracy alert compares with, the same way.
    assert value(samples, "audit_accuracy_target", level="main") == 0.90
    assert value(samples, "audit_accuracy_target", level="sub") == 0.80
    assert (settings.audit_accuracy_target_main, settings.audit_accuracy_target_sub) == (0.9, 0.8)
    assert value(samples, "last_sweep_images_per_second") == 10 / 100
    categories = {
        ("footwear", "shoes"): 2,
        ("bottomwear", "pants"): 3,
        ("topwear", "shirts"): 3,
    }
    found = {
        (dict(labels)["main"], dict(labels)["sub"]): n
        for (name, labels), n in samples.items()
        if name == "refund_sorter_last_sweep_category_photos"
    }
    assert found == categories

    assert value(samples, "baseline_nights") == 3
    assert value(samples, "baseline_flagged_ratio") == pytest.approx(0.2)
    assert value(samples, "abandoned_sweeps") == 1
    assert value(samples, "last_abandoned_sweep_started_timestamp_seconds") == (
        staged.abandoned_started.timestamp()
    )

    # The desk's backlog: flagged or audited, not decided (an undone decision is none).
    assert value(samples, "review_backlog_photos") == 6
    age = value(samples, "review_oldest_age_seconds")
    assert (before - staged.oldest_undecided).total_seconds() <= age
    assert age <= (after - staged.oldest_undecided).total_seconds()

    # The audit accuracy is the desk's window figure (its Accuracy page), from 3 audits.
    with session_factory(pg_url)() as session:
        window = accuracy.report(session).window
        night = drift.night_drift(session, staged.last, settings=settings)
    for level, estimate in (("main", window.unflagged_main), ("sub", window.unflagged_sub)):
        assert estimate.n == 3
        assert value(samples, "audit_photos", level=level) == 3
        assert value(samples, "audit_accuracy", level=level) == pytest.approx(estimate.value)
        assert value(samples, "audit_accuracy_lower", level=level) == pytest.approx(estimate.low)
        assert value(samples, "audit_accuracy_upper", level=level) == pytest.approx(estimate.high)
        assert estimate.low < estimate.value < estimate.high

    # Drift of the last night against B1-B3, as refund_sorter.drift computes it: a new
    # category (topwear) moved the mix.
    assert night.baseline_nights == 3
    for level in ("main", "sub"):
        figures = night.levels[level]
        assert value(samples, "drift_score", level=level) == pytest.approx(figures.psi)
        assert figures.psi > settings.drift_psi_threshold
        assert value(samples, "drift_threshold", level=level) == settings.drift_psi_threshold
        assert value(samples, "drift_confidence_ks", level=level) == pytest.approx(
            figures.confidence_ks
        )
        assert value(samples, "drift_confidence_ks_threshold", level=level) == 0.1
        assert value(samples, "drift_p_value_threshold", level=level) == 0.001
        assert (settings.drift_ks_threshold, settings.drift_p_value) == (0.1, 0.001)
        assert value(samples, "drift_p_value", level=level, test="chi2") == pytest.approx(
            figures.chi2_p_value
        )
        assert value(samples, "drift_p_value", level=level, test="ks") == pytest.approx(
            figures.confidence_ks_p_value
        )

    # The broker: one classify message waiting, one delivered and not acknowledged.
    assert value(samples, "queue_messages", queue="classify", state="ready") == 1
    assert value(samples, "queue_messages", queue="classify", state="unacked") == 1
    assert value(samples, "queue_messages", queue="sweep", state="ready") == 1
    assert value(samples, "queue_messages", queue="sweep", state="unacked") == 0
    assert value(samples, "queue_messages", queue="counter", state="ready") == 0

    assert value(samples, "model_info", version=VERSION) == 1
    assert value(samples, "candidate_model_info", version=CANDIDATE) == 1


def test_a_night_with_no_photos_has_no_ratios(fresh_pg_url, broker_url, tmp_path):
    with session_factory(fresh_pg_url).begin() as session:
        s = Stager(session)
        before = s.sweep(SweepStatus.FINISHED, NOW - 2 * DAY, 60, succeeded=1)
        s.photo(before, label="footwear/shoes")
        # Every file known already: nothing classified, nothing failed.
        last = s.sweep(SweepStatus.FINISHED, NOW - DAY, 5, found=3, known=3)
    settings = make_settings(tmp_path, fresh_pg_url, broker_url)

    with serving(settings) as url:
        samples = scrape(url)

    assert value(samples, "last_sweep_id") == last.id
    assert value(samples, "last_sweep_photos", status="known") == 3
    assert value(samples, "last_sweep_photos", status="ok") == 0
    assert value(samples, "last_sweep_duration_seconds") == 5
    assert value(samples, "sweep_running") == 0
    for absent in (
        "last_sweep_flagged_ratio",
        "last_sweep_failed_ratio",
        "last_sweep_images_per_second",
        "last_sweep_category_photos",
        "drift_score",
        "drift_p_value",
        "running_sweep_started_timestamp_seconds",
        "running_sweep_photos",
        "review_oldest_age_seconds",
        "audit_accuracy",
    ):
        assert absent not in names(samples)
    assert value(samples, "review_backlog_photos") == 0


def test_a_database_that_cannot_be_reached_still_answers(broker_url, tmp_path, caplog):
    database = f"postgresql+psycopg://sorter:s3cret-db@{CLOSED}/refund_sorter"
    settings = make_settings(tmp_path, database, broker_url)
    caplog.set_level(logging.WARNING, logger="monitoring.metrics")

    with serving(settings) as url:
        samples = scrape(url)

    assert value(samples, "database_up") == 0
    assert value(samples, "broker_up") == 1
    assert value(samples, "queue_messages", queue="classify", state="ready") == 0
    assert not {"sweep_running", "review_backlog_photos", "last_sweep_id", "model_info"} & names(
        samples
    )
    (record,) = caplog.records  # once per scrape
    assert "cannot reach the database postgresql+psycopg://sorter:***@127.0.0.1:1" in (
        record.getMessage()
    )
    assert "s3cret-db" not in caplog.text


def test_a_broker_that_cannot_be_reached_still_answers(staged, pg_url, tmp_path, caplog):
    settings = make_settings(tmp_path, pg_url, f"redis://:s3cret-redis@{CLOSED}/0")
    caplog.set_level(logging.WARNING, logger="monitoring.metrics")

    with serving(settings) as url:
        samples = scrape(url)

    assert value(samples, "broker_up") == 0
    assert value(samples, "database_up") == 1
    assert value(samples, "last_sweep_id") == staged.last
    assert value(samples, "sweep_running") == 1
    assert "queue_messages" not in names(samples)
    (record,) = caplog.records
    assert "cannot reach the broker at redis://:***@127.0.0.1:1/0" in record.getMessage()
    assert "s3cret-redis" not in caplog.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_command_asks_for_the_password_when_one_is_set(pg_url, broker_url, tmp_path):
    settings = make_settings(tmp_path, pg_url, broker_url)
    env = {**service_env(settings), "REFUND_SORTER_METRICS_BASIC_AUTH": "prometheus:s3cret-m"}
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    log = (tmp_path / "metrics.log").open("wb")
    server = subprocess.Popen(
        [REFUND_SORTER, "metrics-server", "--port", str(port)],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body, headers = get(url)
                break
            except urllib.error.URLError:  # not listening yet
                assert server.poll() is None, (tmp_path / "metrics.log").read_text()
                assert time.monotonic() < deadline, "metrics-server did not start in 60 s"
                time.sleep(0.2)

        assert status == 401
        assert headers["WWW-Authenticate"].startswith('Basic realm="refund-sorter metrics"')
        assert "refund_sorter" not in body
        assert get(url, "prometheus:wrong")[0] == 401
        assert get(url, "someone:s3cret-m")[0] == 401
        status, body, _ = get(url, "prometheus:s3cret-m")
        assert status == 200
        assert "refund_sorter_database_up 1.0" in body
        assert get(f"http://127.0.0.1:{port}/other", "prometheus:s3cret-m")[0] == 404
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_the_command_refuses_a_password_setting_without_a_password(tmp_path):
    settings = make_settings(tmp_path, "sqlite:///unused.db", f"redis://{CLOSED}/0")
    env = {**service_env(settings), "REFUND_SORTER_METRICS_BASIC_AUTH": "prometheus"}

    result = subprocess.run(
        [REFUND_SORTER, "metrics-server", "--port", str(free_port())],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert result.stderr.startswith("error: invalid setting: REFUND_SORTER_METRICS_BASIC_AUTH")
    assert "Traceback" not in result.stderr
