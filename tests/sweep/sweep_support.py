"""Helpers shared by the sweep tests: incoming files, the tiny model, reading back results,
and real Celery worker processes.

Plain functions (not fixtures) so a test can call them more than once with other seeds.
"""

import base64
import contextlib
import csv
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest
import redis
from PIL import Image
from sqlalchemy import func, select

from models import ItemStatus, Prediction, SweepRun, SweepStatus
from refund_sorter.config import Settings, get_settings
from refund_sorter.crud import as_utc
from refund_sorter.db import dispose, session_factory, upgrade
from refund_sorter.messages import CLASSIFY_QUEUE, WorkItem, read_task

REPO_ROOT = Path(__file__).resolve().parents[2]
NESTED = Path("dock-3") / "2024-03-01"  # incoming/ holds subfolders as well as files

# The CSV columns an operator's spreadsheet relies on (export.COLUMNS may add more),
# spelled out rather than imported so that renaming a column in the code fails the tests.
CSV_COLUMNS = [
    "file_name",
    "content_hash",
    "status",
    "main_category",
    "main_confidence",
    "sub_category",
    "sub_confidence",
    "needs_review",
    "model_version",
    "sweep_run",
    "error",
    "classified_at",
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc(value: datetime) -> datetime:
    """A stored time in UTC, whatever the database session's time zone (naive = UTC)."""
    return as_utc(value).astimezone(UTC)


# ----------------------------------------------------------------------------- incoming files


@dataclass
class Incoming:
    """What a test dropped into ``incoming/``, keyed by path relative to it."""

    root: Path
    images: dict[Path, str] = field(default_factory=dict)  # readable image -> content hash
    unreadable: dict[Path, tuple[str, str]] = field(default_factory=dict)  # -> (hash, error)

    @property
    def all(self) -> dict[Path, str]:
        return {**self.images, **{p: h for p, (h, _) in self.unreadable.items()}}


def image_bytes(rng: np.random.Generator, suffix: str, side: int = 40) -> bytes:
    """A small photo-like image: a random base colour, a gradient and noise."""
    base = rng.integers(0, 256, size=3)
    ramp = np.linspace(-40, 40, side)[None, :, None] * rng.uniform(-1, 1, size=3)
    arr = base + ramp + rng.normal(0, 12, size=(side, side, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if suffix == ".jpg" else "PNG", quality=90)
    return buf.getvalue()


def add_images(incoming: Incoming, n: int, seed: int, prefix: str = "img") -> dict[Path, str]:
    """Write ``n`` distinct 40x40 JPEG and PNG images, a third of them in a nested folder."""
    rng = np.random.default_rng(seed)
    written: dict[Path, str] = {}
    for i in range(n):
        suffix = ".jpg" if i % 2 == 0 else ".png"
        rel = (NESTED if i % 3 == 0 else Path()) / f"{prefix}-{seed}-{i:03d}{suffix}"
        data = image_bytes(rng, suffix)
        path = incoming.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written[rel] = sha256(data)
    taken = set(incoming.all.values())
    assert len(set(written.values())) == n and not taken & set(written.values()), "images collide"
    incoming.images.update(written)
    return written


# Older than REFUND_SORTER_SETTLE_SECONDS (120): a bad file this old is damaged, not one
# still being written.
DAMAGED_AGE = 3600.0


def backdate(path: Path, seconds: float = DAMAGED_AGE) -> Path:
    """Set the modification time of ``path`` ``seconds`` back: a bad file that has sat in
    incoming/ long enough to be taken as damaged rather than as still arriving."""
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def add_unreadable(
    incoming: Incoming, seed: int, empty: bool = True
) -> dict[Path, tuple[str, str]]:
    """A text file named .jpg and an empty file (both caught by the producer's sniff), and a
    truncated JPEG in the nested folder (its header is fine: only the worker finds out), all
    backdated: damaged files, not files still being written.

    Every empty file has the same content hash; ``empty=False`` leaves it out where a test
    keys files by hash.
    """
    rng = np.random.default_rng(seed)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), mode="RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="JPEG", quality=95)
    files = {
        Path(f"shopping-list-{seed}.jpg"): (
            f"returns slip {seed}: 2 shirts, 1 skirt\n".encode(),
            "not an image",
        ),
        Path(f"empty-{seed}.jpg"): (b"", "empty file"),
        NESTED / f"truncated-{seed}.jpg": (
            buf.getvalue()[: len(buf.getvalue()) // 2],
            "corrupt or truncated",
        ),
    }
    written = {}
    for rel, (data, error) in files.items():
        if data or empty:
            path = incoming.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            backdate(path)
            written[rel] = (sha256(data), error)
    incoming.unreadable.update(written)
    return written


def files_under(folder: Path) -> dict[Path, str]:
    """Every file below ``folder`` (relative path -> content hash)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {
        p.relative_to(folder): sha256(p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------ model and settings


@dataclass(frozen=True)
class TinyModel:
    path: Path
    version: str
    taxonomy: object
    review_threshold: float  # the median sub confidence: about half the images need review


def save_random_model(
    path: Path, seed: int = 0, note: str = "random weights for tests", **calibration
):
    from model_support import save_random_model as save

    from refund_sorter.taxonomy import Taxonomy

    taxonomy = Taxonomy(
        main=("bottoms", "tops"),
        sub=("jeans", "skirt", "shirt", "sweater", "t-shirt"),
        sub_to_main=(0, 0, 1, 1, 1),
    )
    return save(path, taxonomy, seed=seed, note=note, **calibration), taxonomy


def build_settings(
    home: Path,
    database_url: str,
    model: TinyModel,
    broker_url: str = "redis://127.0.0.1:1/0",
    **overrides,
) -> Settings:
    # The default broker is a closed port: local mode must never need one.
    values = dict(
        home=home,
        database_url=database_url,
        broker_url=broker_url,
        model_path=model.path,
        batch_size=8,
        batch_max_wait=0.5,
        review_threshold=model.review_threshold,
        device="cpu",
        torch_threads=0,
    )
    values.update(overrides)
    settings = Settings(**values)
    settings.incoming_dir.mkdir(parents=True)
    return settings


# ------------------------------------------------------------------------------ the database

PG_HOST, PG_PORT, PG_USER, PG_ADMIN_DB = "127.0.0.1", 5432, "postgres", "test"


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(
            host=PG_HOST,
            port=PG_PORT,
            user=PG_USER,
            dbname=PG_ADMIN_DB,
            autocommit=True,
            connect_timeout=5,
        )
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as {PG_USER} "
            f"(database {PG_ADMIN_DB}); these tests need it running: {exc}",
            pytrace=False,
        )


@contextmanager
def postgres_database(migrate: bool = True) -> Iterator[str]:
    """A new, empty database (migrated unless told otherwise), dropped afterwards."""
    name = f"rs_test_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    try:
        if migrate:
            upgrade(url)
        yield url
    finally:
        dispose(url)
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------------------------ Redis

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_CLAIM_KEY = "refund-sorter-tests:claimed-by"


@contextmanager
def redis_database() -> Iterator[str]:
    """The URL of a database of the shared Redis no one else uses (claimed atomically),
    emptied afterwards, so tests never see each other's messages. Celery's broadcasts are
    prefixed with the database number by kombu, so pings and control commands stay inside
    it too."""
    try:
        redis.Redis(REDIS_HOST, REDIS_PORT, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}; these tests need "
            f"it running: {exc}",
            pytrace=False,
        )
    owner = f"pid {os.getpid()} {uuid.uuid4().hex[:8]}"
    # In random order: other suites tend to pick 0, 1 or 15 without asking.
    for db in random.sample(range(1, 16), 15):
        client = redis.Redis(REDIS_HOST, REDIS_PORT, db=db)
        if client.dbsize() == 0 and client.set(REDIS_CLAIM_KEY, owner, nx=True):
            break
        client.close()
    else:
        pytest.fail(
            "no empty Redis database among 1-15 for the tests (an interrupted run leaves "
            f"its database claimed by the key {REDIS_CLAIM_KEY!r}: flush that database)",
            pytrace=False,
        )
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        client.flushdb()
        client.close()


def get_run(settings: Settings, run_id: int) -> SweepRun:
    with session_factory(settings.database_url)() as session:
        return session.get(SweepRun, run_id)


def all_runs(settings: Settings) -> list[SweepRun]:
    with session_factory(settings.database_url)() as session:
        return list(session.scalars(select(SweepRun).order_by(SweepRun.id)))


def all_predictions(settings: Settings) -> list[Prediction]:
    with session_factory(settings.database_url)() as session:
        return list(session.scalars(select(Prediction).order_by(Prediction.id)))


def count_predictions(settings: Settings) -> int:
    with session_factory(settings.database_url)() as session:
        return session.scalar(select(func.count()).select_from(Prediction))


def local_sweep(settings: Settings, classifier) -> SweepRun:
    """A sweep whose work items are classified in this process, in one batch."""
    from producer.sweep import run_sweep
    from worker.pipeline import process_batch

    items = []
    run = run_sweep(settings, dispatch=items.extend, trigger="local").run
    if items:
        process_batch(items, classifier, settings)
    return get_run(settings, run.id)


def wait_for_run(
    settings: Settings,
    run_id: int,
    timeout: float = 120.0,
    logs: "list[WorkerProcess] | None" = None,
) -> SweepRun:
    """Poll the sweep run until it leaves ``running``; fail with the workers' logs if not."""
    deadline = time.monotonic() + timeout
    while True:
        run = get_run(settings, run_id)
        if run.status != SweepStatus.RUNNING:
            return run
        if time.monotonic() > deadline:
            tails = "\n".join(w.describe() for w in logs or [])
            raise AssertionError(
                f"sweep {run_id} still running after {timeout:.0f} s "
                f"(pending {run.pending} of {run.enqueued})\n{tails}"
            )
        time.sleep(0.5)


def check_finished_sweep(
    settings: Settings, run_id: int, incoming: Incoming, taxonomy
) -> list[Prediction]:
    """Everything a finished sweep promises the operator, checked against disk, table and CSV.

    ``incoming`` holds exactly the files this sweep found (none of them seen before).
    """
    run = get_run(settings, run_id)
    n_img, n_bad = len(incoming.images), len(incoming.unreadable)
    assert run.status == SweepStatus.FINISHED, run.message
    assert (run.found, run.succeeded, run.failed, run.known, run.deferred, run.pending) == (
        n_img + n_bad,
        n_img,
        n_bad,
        0,
        0,
        0,
    )
    assert run.found == run.succeeded + run.failed + run.known + run.deferred
    # The producer catches the text file and the empty one; the truncated JPEG is enqueued.
    n_producer_failures = sum(
        1 for _, err in incoming.unreadable.values() if err in ("not an image", "empty file")
    )
    assert run.enqueued == run.found - n_producer_failures
    assert run.finished_at is not None

    rows = [p for p in all_predictions(settings) if p.sweep_run_id == run_id]
    by_hash = {p.content_hash: p for p in rows}
    assert len(rows) == len(by_hash) == n_img + n_bad
    assert {p.model_version for p in rows} == {run.model_version}

    # Nothing is left behind, and every file sits where its row says, with its own bytes.
    assert files_under(settings.incoming_dir) == {}
    processed, failed = files_under(settings.processed_dir), files_under(settings.failed_dir)
    for rel, content_hash in incoming.images.items():
        p = by_hash[content_hash]
        assert p.status == ItemStatus.OK, (rel, p.error)
        assert p.error is None
        assert p.file_name == rel.name
        assert Path(p.original_path) == settings.incoming_dir.absolute() / rel
        assert Path(p.final_path) == settings.processed_dir.absolute() / rel
        assert processed[rel] == content_hash
        assert p.main_category in taxonomy.main and p.sub_category in taxonomy.sub
        sub_index = taxonomy.index_of(p.main_category, p.sub_category)
        assert sub_index is not None, f"{p.sub_category} is not under {p.main_category}"
        assert 0 < p.sub_confidence <= p.main_confidence <= 1 + 1e-6
        assert p.needs_review == (p.sub_confidence < review_threshold(settings))
        # The next best sub categories the review desk offers, the decision first.
        assert len(p.top_subs) == 3, p.top_subs
        assert (p.top_subs[0]["main"], p.top_subs[0]["sub"]) == (p.main_category, p.sub_category)
        assert abs(p.top_subs[0]["p"] - p.sub_confidence) <= 1e-4
        assert all(taxonomy.index_of(t["main"], t["sub"]) is not None for t in p.top_subs)
        assert utc(p.classified_at) >= utc(run.started_at)
    for rel, (content_hash, error) in incoming.unreadable.items():
        p = by_hash[content_hash]
        assert p.status == ItemStatus.FAILED
        assert error in p.error, (rel, p.error)
        assert p.main_category is None and p.sub_category is None and not p.needs_review
        assert p.top_subs is None
        assert Path(p.final_path) == settings.failed_dir.absolute() / rel
        assert failed[rel] == content_hash
    # ... and nowhere else: no second copy under another name.
    assert {rel: h for rel, h in processed.items() if h in by_hash} == incoming.images
    assert {rel: h for rel, h in failed.items() if h in by_hash} == {
        rel: h for rel, (h, _) in incoming.unreadable.items()
    }

    check_csv_matches(sweep_csv(settings, run), rows)
    return rows


def review_threshold(settings: Settings) -> float:
    """The threshold the workers must apply: the setting when given, else the model's own."""
    if settings.review_threshold is not None:
        return settings.review_threshold
    from classifier.checkpoint import load_checkpoint

    return load_checkpoint(settings.model_path).review_threshold


def sweep_csv(settings: Settings, run: SweepRun, timeout: float = 30.0) -> Path:
    """The sweep's CSV. The worker writes it just after the commit that finishes the sweep,
    so a test that saw the sweep finish may have to wait a moment for it."""
    path = settings.export_dir / f"sweep-{utc(run.started_at).date()}-{run.id:05d}.csv"
    deadline = time.monotonic() + timeout
    while not path.is_file():
        found = sorted(settings.export_dir.glob("*"))
        assert time.monotonic() < deadline, f"no CSV for sweep {run.id}: {found}"
        time.sleep(0.1)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert set(CSV_COLUMNS) <= set(reader.fieldnames), reader.fieldnames
        return list(reader)


def check_csv_matches(path: Path, rows: list[Prediction]) -> None:
    """The CSV holds exactly ``rows``, field for field."""
    lines = read_csv(path)
    assert sorted(line["content_hash"] for line in lines) == sorted(p.content_hash for p in rows)
    by_hash = {p.content_hash: p for p in rows}
    for line in lines:
        p = by_hash[line["content_hash"]]
        assert line["file_name"] == p.file_name
        assert line["status"] == p.status
        assert line["main_category"] == (p.main_category or "")
        assert line["sub_category"] == (p.sub_category or "")
        for column, value in (
            ("main_confidence", p.main_confidence),
            ("sub_confidence", p.sub_confidence),
        ):
            if value is None:
                assert line[column] == ""
            else:
                assert abs(float(line[column]) - value) <= 1e-4
        assert line["needs_review"] == ("true" if p.needs_review else "false")
        assert line["audited"] == ("true" if p.audited else "false")
        for column in ("audit_rate", "review_threshold"):
            value = getattr(p, column)
            assert line[column] == ("" if value is None else f"{value:.4f}")
        assert line["model_version"] == p.model_version
        assert int(line["sweep_run"]) == p.sweep_run_id
        assert line["error"] == (p.error or "")
        assert line["classified_at"] == utc(p.classified_at).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------ Celery workers


def service_env(settings: Settings) -> dict[str, str]:
    """The environment a worker (or any refund-sorter process) gets for ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFUND_SORTER_")}
    env.update(
        PYTHONUNBUFFERED="1",
        REFUND_SORTER_HOME=str(settings.home),
        REFUND_SORTER_DATABASE_URL=settings.database_url,
        REFUND_SORTER_BROKER_URL=settings.broker_url,
        REFUND_SORTER_MODEL_PATH=str(settings.model_path),
        REFUND_SORTER_MODEL_STORE=str(settings.model_store),
        REFUND_SORTER_BATCH_SIZE=str(settings.batch_size),
        REFUND_SORTER_BATCH_MAX_WAIT=str(settings.batch_max_wait),
        REFUND_SORTER_DEVICE=settings.device,
        REFUND_SORTER_TORCH_THREADS=str(settings.torch_threads),
        REFUND_SORTER_TIMEZONE=settings.timezone,
        REFUND_SORTER_SWEEP_STALL_SECONDS=str(settings.sweep_stall_seconds),
        REFUND_SORTER_SWEEP_STALL_CHECK_SECONDS=str(settings.sweep_stall_check_seconds),
        REFUND_SORTER_SETTLE_SECONDS=str(settings.settle_seconds),
        REFUND_SORTER_RETRY_DELAY=str(settings.retry_delay),
        REFUND_SORTER_RETRY_LIMIT=str(settings.retry_limit),
        REFUND_SORTER_VISIBILITY_TIMEOUT=str(settings.visibility_timeout),
        REFUND_SORTER_FILE_BY_CATEGORY=str(settings.file_by_category).lower(),
        REFUND_SORTER_ENVIRONMENT=settings.environment,
        REFUND_SORTER_AUDIT_RATE=str(settings.audit_rate),
        REFUND_SORTER_AUDIT_SEED=settings.audit_seed,
        REFUND_SORTER_SHADOW_RATE=str(settings.shadow_rate),
        REFUND_SORTER_PRECISION=settings.precision,
    )
    for name in ("reviewers", "review_secret_key"):
        if (secret := getattr(settings, name)) is not None:
            env[f"REFUND_SORTER_{name.upper()}"] = secret.get_secret_value()
    if settings.review_threshold is not None:  # unset: the model's own threshold
        env["REFUND_SORTER_REVIEW_THRESHOLD"] = str(settings.review_threshold)
    return env


def use_in_this_process(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point ``get_settings()`` (what the CLI reads) at ``settings`` via REFUND_SORTER_*."""
    for key in [k for k in os.environ if k.startswith("REFUND_SORTER_")]:
        monkeypatch.delenv(key)
    for key, value in service_env(settings).items():
        if key.startswith("REFUND_SORTER_"):
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()


class ServiceProcess:
    """``python -m celery -A worker ...`` (or any command) as an operator starts it, in its own
    process group, its output in ``log_path``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def describe(self, tail: int = 6000) -> str:
        status = f"exit code {self.proc.poll()}" if self.proc.poll() is not None else "running"
        return f"----- log of {self.name} ({status}) -----\n{self.log()[-tail:]}"

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} not in the log after {timeout:.0f} s\n{self.describe()}"
                )
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the whole group at once (a worker's pool processes too): no warm shutdown."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: finish the batch in hand
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        # The pool's child may outlive a parent that was killed: end the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()


class WorkerProcess(ServiceProcess):
    """``celery -A worker worker`` with prefork processes, one unless told (both queues unless
    told)."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        log_path: Path,
        queues: str | None = None,
        processes: int = 1,
    ) -> None:
        argv = [sys.executable, "-m", "celery", "-A", "worker", "worker"]
        argv += ["--concurrency", str(processes), "--pool", "prefork", "-n", name]
        argv += ["--loglevel", "INFO"]
        super().__init__(name, argv + (["-Q", queues] if queues else []), env, log_path)


class BeatProcess(ServiceProcess):
    """``celery -A worker beat``, its schedule file beside its log."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        schedule = log_path.with_suffix(".schedule")
        argv = [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel", "INFO"]
        super().__init__("beat", [*argv, "--schedule", str(schedule)], env, log_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A ``redis-server`` of the test's own on a free loopback port, append-only with an fsync
    per write (so a kill -9 loses nothing it acknowledged), to kill and restart by pid. The
    shared Redis on 6379 is never touched."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        options = {"port": self.port, "bind": "127.0.0.1", "dir": self.folder, "save": ""}
        options |= {"appendonly": "yes", "appendfsync": "always"}
        options["logfile"] = self.folder / "redis.log"
        argv = ["redis-server", *(x for k, v in options.items() for x in (f"--{k}", str(v)))]
        self.proc = subprocess.Popen(
            argv,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError(
                        (self.folder / "redis.log").read_text(errors="replace")
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        """kill -9: no shutdown, no last write."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def wipe(self) -> None:
        """Drop what the killed server had written, so it restarts empty."""
        shutil.rmtree(self.folder / "appendonlydir", ignore_errors=True)
        (self.folder / "dump.rdb").unlink(missing_ok=True)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


def wait_for_workers(app, workers: list[WorkerProcess], timeout: float = 90.0) -> None:
    """Until every worker answers a ping over the broker (not merely until it started)."""
    deadline = time.monotonic() + timeout
    names = {w.name for w in workers}
    while True:
        for w in workers:
            if w.proc.poll() is not None:
                raise AssertionError(f"worker {w.name} exited early\n{w.describe()}")
        replies = app.control.ping(destination=sorted(names), timeout=1.0) or []
        if names <= {name for reply in replies for name in reply}:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"workers did not answer a ping within {timeout:.0f} s (got {replies})\n"
                + "\n".join(w.describe() for w in workers)
            )
        time.sleep(0.5)


# ------------------------------------------------------------------------------------- faults


@dataclass
class Settled:
    """How a sweep came through a fault: what the test prints and asserts."""

    fault: str
    photos: int
    lost: int  # images without a row of the expected status
    duplicated: int  # rows beyond one per image, and files beyond one per image in processed/
    seconds: float  # from the fault until every row was settled

    def report(self) -> str:
        return (
            f"FAULT {self.fault}: {self.photos} photos, {self.lost} lost, "
            f"{self.duplicated} duplicated, settled {self.seconds:.1f} s after the fault"
        )


def settled_after(
    settings: Settings,
    run_id: int,
    incoming: Incoming,
    fault: str,
    since: float,
    workers=(),
    expect: str = ItemStatus.OK,
) -> Settled:
    """Wait (up to 5 minutes) for the sweep to end, then count the images without a row of
    status ``expect`` (lost) and the rows and processed files beyond one per image."""
    wait_for_run(settings, run_id, timeout=300, logs=list(workers))
    seconds = time.monotonic() - since
    rows = all_predictions(settings)
    settled = {p.content_hash for p in rows if p.status == expect}
    lost = sum(1 for h in incoming.images.values() if h not in settled)
    per_row = Counter(p.content_hash for p in rows)
    per_file = Counter(files_under(settings.processed_dir).values())
    duplicated = sum(n - 1 for n in per_row.values()) + sum(n - 1 for n in per_file.values())
    result = Settled(fault, len(incoming.images), lost, duplicated, seconds)
    print(result.report())
    return result


def wait_for_progress(settings: Settings, run_id: int, done: int, timeout: float = 120) -> int:
    """Until the sweep has settled ``done`` images; returns how many it had."""
    deadline = time.monotonic() + timeout
    while True:
        run = get_run(settings, run_id)
        if run.succeeded + run.failed >= done or run.status != SweepStatus.RUNNING:
            return run.succeeded + run.failed
        if time.monotonic() > deadline:
            raise AssertionError(f"sweep {run_id} settled only {run.succeeded} in {timeout} s")
        time.sleep(0.05)


# --------------------------------------------------------------------------------- the broker


def queued_messages(redis_client) -> list[dict]:
    """The classify queue's messages, decoded as a worker would see them."""
    messages = []
    for raw in redis_client.lrange(CLASSIFY_QUEUE, 0, -1):
        envelope = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        messages.append({"task": envelope["headers"]["task"], "args": args, "kwargs": kwargs})
    return messages


def queued_items(redis_client) -> list[WorkItem]:
    """The work items the classify queue's messages carry, in the order they were published
    (Redis hands out the list's far end first)."""
    items = []
    for message in reversed(queued_messages(redis_client)):
        carried, refused = read_task(message["args"])
        assert refused == []
        items += carried
    return items
