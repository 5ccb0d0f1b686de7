"""Fixtures for the review desk: a PostgreSQL database holding real classifications (local
sweeps of generated photos by a small random-weight model), reviewer accounts, the app."""

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

# The sweep tests' helpers: incoming files, the tiny model, PostgreSQL databases.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweep"))
pytest.register_assert_rewrite("sweep_support")
from desk_support import PASSWORDS, SECRET_KEY  # noqa: E402
from sweep_support import (  # noqa: E402
    Incoming,
    TinyModel,
    add_images,
    build_settings,
    local_sweep,
    postgres_database,
    save_random_model,
    use_in_this_process,
)

from refund_sorter.config import Settings, get_settings  # noqa: E402
from refund_sorter.passwords import hash_password  # noqa: E402


@dataclass
class Nights:
    """Three local sweeps: the first and last flag every photo for review, the middle one
    none. ``flagged[sweep id]`` lists the ids of the rows flagged that night."""

    settings: Settings
    first: int
    quiet: int
    last: int
    flagged: dict[int, list[int]]


@pytest.fixture(scope="session")
def review_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    path = tmp_path_factory.mktemp("review_model") / "tiny.pt"
    version, taxonomy = save_random_model(path, seed=3)
    return TinyModel(path, version, taxonomy, review_threshold=1.0)


@pytest.fixture(scope="session")
def accounts() -> str:
    """REFUND_SORTER_REVIEWERS for anna and ben (real scrypt hashes)."""
    return ",".join(f"{name}:{hash_password(pw)}" for name, pw in PASSWORDS.items())


def night(settings: Settings, model: TinyModel, n: int, seed: int, threshold: float) -> int:
    from classifier.predict import Classifier

    add_images(Incoming(settings.incoming_dir), n, seed=seed, prefix=f"night{seed}")
    settings.review_threshold = threshold
    return local_sweep(settings, Classifier.from_path(model.path, "cpu", "auto", threshold)).id


@pytest.fixture(scope="module")
def nights(tmp_path_factory, review_model, accounts) -> Iterator[Nights]:
    from sqlalchemy import select

    from models import Prediction
    from refund_sorter.db import session_factory

    with postgres_database() as url:
        settings = build_settings(
            tmp_path_factory.mktemp("desk") / "home",
            url,
            review_model,
            reviewers=SecretStr(accounts),
            review_secret_key=SecretStr(SECRET_KEY),
        )
        first = night(settings, review_model, 6, seed=11, threshold=1.0)
        quiet = night(settings, review_model, 3, seed=12, threshold=0.0)
        last = night(settings, review_model, 6, seed=13, threshold=1.0)
        with session_factory(url)() as session:
            rows = session.execute(
                select(Prediction.sweep_run_id, Prediction.id)
                .where(Prediction.needs_review)
                .order_by(Prediction.id)
            ).all()
        flagged: dict[int, list[int]] = {}
        for sweep, row_id in rows:
            flagged.setdefault(sweep, []).append(row_id)
        assert set(flagged) == {first, last}
        yield Nights(settings, first, quiet, last, flagged)


@pytest.fixture
def use_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Settings], None]]:
    """Point ``get_settings()`` (what the CLI reads) at ``settings`` via REFUND_SORTER_*."""
    yield lambda settings: use_in_this_process(settings, monkeypatch)
    get_settings.cache_clear()


@pytest.fixture
def browser():
    """A headless Chromium (tests/review/browser.py), closed with every process it started."""
    from browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.fail(
            "chromium is not installed (bash tests/setup-machine.sh installs it)",
            pytrace=False,
        )
    with Browser() as b:
        yield b
