"""Fixtures for the sweep tests: a throwaway PostgreSQL database, a Redis database of their
own, a tiny random-weight model, a home folder with ``incoming/``, and explicit Settings.

PostgreSQL (127.0.0.1:5432, user postgres, trust auth) and Redis (127.0.0.1:6379) must be
running, as they are in CI. When they are not, the tests that need them fail with a message
saying so: a skipped integration test reads as a passing one.
"""

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import redis

from refund_sorter.config import Settings, get_settings

# Failed assertions in the shared helpers show their values, as the tests' own do.
pytest.register_assert_rewrite("sweep_support")
from sweep_support import (  # noqa: E402
    REDIS_CLAIM_KEY,
    Incoming,
    RedisServer,
    TinyModel,
    WorkerProcess,
    add_images,
    build_settings,
    postgres_database,
    redis_database,
    save_random_model,
    service_env,
    use_in_this_process,
    wait_for_workers,
)

# ------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A migrated PostgreSQL database shared by the tests of one module."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A migrated PostgreSQL database for this test alone."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def make_pg_database() -> Iterator[Callable[..., str]]:
    """Create more databases in a test: ``make_pg_database(migrate=False)``."""
    with ExitStack() as stack:
        yield lambda migrate=True: stack.enter_context(postgres_database(migrate))


# ------------------------------------------------------------------------------------ Redis


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    """A Redis database no one else uses, emptied afterwards (``redis_database``)."""
    with redis_database() as url:
        yield url


@pytest.fixture
def redis_client(broker_url: str) -> Iterator[redis.Redis]:
    """A client on the test broker's database; empties it (but for the claim) afterwards."""
    client = redis.Redis.from_url(broker_url)
    yield client
    for key in client.scan_iter():
        if key != REDIS_CLAIM_KEY.encode():
            client.delete(key)
    client.close()


@contextmanager
def publishing_to(broker: str, monkeypatch: pytest.MonkeyPatch):
    from refund_sorter import celery_app

    app = celery_app.SorterCelery(Settings(broker_url=broker), set_as_current=False)
    monkeypatch.setattr(celery_app, "app", app)
    yield app
    app.close()


@pytest.fixture
def producer_app(broker_url: str, monkeypatch: pytest.MonkeyPatch):
    """Make ``publish`` (and ``app.control``) talk to the test broker.

    ``refund_sorter.celery_app.app`` took its broker URL from the environment when first
    imported; rather than re-point that shared object (and the connection pools it caches),
    the test swaps in an app built the same way for the test broker. It only publishes: it
    never imports the tasks itself.
    """
    with publishing_to(broker_url, monkeypatch) as app:
        yield app


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to kill and restart (the shared one is never touched)."""
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def own_producer_app(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch):
    """``producer_app`` for the test's own Redis."""
    with publishing_to(redis_server.url, monkeypatch) as app:
        yield app


@pytest.fixture
def start_worker(producer_app, tmp_path, outcome_failed):
    """``start_worker(settings)``: a real ``celery -A worker worker`` for these settings (on
    the test broker), answering pings; stopped at the end, its log printed if the test
    failed."""
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        name = f"w{len(started)}@sweep-test"
        worker = WorkerProcess(name, service_env(settings), tmp_path / f"w{len(started)}.log")
        started.append(worker)
        wait_for_workers(producer_app, [worker])
        return worker

    yield start
    for worker in started:
        worker.stop()
        if outcome_failed():
            print(worker.describe(tail=20000))


# -------------------------------------------------------------------------------- the model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Untrained 2 main x 5 sub model at 32 px, and a review threshold that splits its
    confidences on images like the tests' in two, so ``needs_review`` is tested both ways."""
    from classifier.predict import Classifier
    from refund_sorter.images import open_rgb

    root = tmp_path_factory.mktemp("tiny_model")
    version, taxonomy = save_random_model(root / "tiny.pt")
    calibration = Incoming(root / "calibration")
    add_images(calibration, 40, seed=999)
    clf = Classifier.from_path(root / "tiny.pt", "cpu")
    preds = clf.predict_images([open_rgb(calibration.root / p, 32) for p in calibration.images])
    confidences = sorted(p.sub_confidence for p in preds)
    return TinyModel(root / "tiny.pt", version, taxonomy, confidences[len(confidences) // 2])


@pytest.fixture(scope="session")
def classifier(tiny_model: TinyModel):
    from classifier.predict import Classifier

    return Classifier.from_path(tiny_model.path, "cpu")


# ------------------------------------------------------------------------ settings and files


@pytest.fixture
def make_settings(tmp_path: Path, tiny_model: TinyModel) -> Callable[..., Settings]:
    """``make_settings(database_url, **overrides)``: a home folder with an empty incoming/."""
    count = iter(range(100))

    def make(database_url: str | None = None, **overrides) -> Settings:
        home = tmp_path / f"home{next(count)}"
        url = database_url or f"sqlite:///{home / 'refund-sorter.db'}"
        return build_settings(home, url, tiny_model, **overrides)

    return make


@pytest.fixture
def use_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Settings], None]]:
    """Point ``get_settings()`` (what the CLI reads) at ``settings`` via REFUND_SORTER_*."""

    yield lambda settings: use_in_this_process(settings, monkeypatch)
    get_settings.cache_clear()


# -------------------------------------------------------------------- reports for finalizers


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def outcome_failed(request: pytest.FixtureRequest) -> Callable[[], bool]:
    """For a finalizer: did the test body (or its setup) fail?"""

    def failed() -> bool:
        return any(
            getattr(request.node, f"rep_{when}", None) is not None
            and getattr(request.node, f"rep_{when}").failed
            for when in ("setup", "call")
        )

    return failed
