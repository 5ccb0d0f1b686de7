"""Drift of a night against its baseline nights, on generated rows in a migrated database:
SQLite, and the same tests again on PostgreSQL."""

import math
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp
from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from models import ItemStatus, Prediction, SweepRun, SweepStatus
from refund_sorter.config import Settings
from refund_sorter.db import dispose, session_factory, upgrade
from refund_sorter.drift import (
    EPSILON,
    baseline_nights,
    confidence_histogram,
    night_drift,
    nights_drift,
)

# The sweep tests' throwaway PostgreSQL databases.
sys.path.insert(0, str(Path(__file__).resolve().parent / "sweep"))
from sweep_support import postgres_database

MIX = {"tops/shirt": 60, "tops/sweater": 30, "bottoms/jeans": 10}
SHIFTED = {"tops/shirt": 20, "tops/sweater": 30, "bottoms/jeans": 50}
DEFAULTS = Settings()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]
)
def database_url(request, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('drift') / 'refund-sorter.db'}"
        upgrade(url)
        yield url
        dispose(url)
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    with session_factory(database_url)() as session:
        yield session
        session.rollback()
        session.execute(delete(Prediction))
        session.execute(delete(SweepRun))
        session.commit()


def grid(n: int) -> np.ndarray:
    """``n`` confidences evenly spread over (0.5, 1)."""
    return 0.5 + 0.5 * (np.arange(n) + 0.5) / n


class Nights:
    """Sweeps and their predictions written straight into the tables, a day apart."""

    def __init__(self, session: Session):
        self.session = session
        self.day = 0

    def add(
        self,
        mix: dict[str, int] = MIX,
        *,
        repeat: int = 1,
        status: str = SweepStatus.FINISHED,
        confidences=None,
        failed: dict[str, int] | None = None,
    ) -> int:
        """A sweep with ``mix`` x ``repeat`` ok photos (each category's confidences on
        ``grid``, repeated, unless ``confidences(n)`` gives them) and ``failed`` rows that
        carry categories too, to show that nothing counts them."""
        self.day += 1
        run = SweepRun(
            status=status,
            trigger="beat",
            model_version="v1",
            started_at=datetime(2026, 3, 1, 2, tzinfo=UTC) + timedelta(days=self.day),
        )
        self.session.add(run)
        self.session.flush()
        rows = []
        for label, n in mix.items():
            values = np.tile(grid(n), repeat) if confidences is None else confidences(n * repeat)
            rows += [self._row(run.id, ItemStatus.OK, label, c) for c in values]
        for label, n in (failed or {}).items():
            rows += [self._row(run.id, ItemStatus.FAILED, label, 0.99) for _ in range(n)]
        if rows:
            self.session.execute(insert(Prediction), rows)
        self.session.commit()
        return run.id

    @staticmethod
    def _row(sweep: int, status: str, label: str, confidence: float) -> dict:
        main, sub = label.split("/")
        return {
            "content_hash": uuid.uuid4().hex,
            "model_version": "v1",
            "sweep_run_id": sweep,
            "status": status,
            "file_name": "photo.jpg",
            "original_path": "/in/photo.jpg",
            "main_category": main,
            "main_confidence": float(confidence),
            "sub_category": sub,
            "sub_confidence": 0.9 * float(confidence),
        }


@pytest.fixture
def nights(session: Session) -> Nights:
    return Nights(session)


def psi(pairs) -> float:
    return sum((p - q) * math.log(p / q) for p, q in pairs)


def test_an_unchanged_mix_scores_zero_with_p_values_near_1(session, nights):
    for _ in range(5):
        nights.add(repeat=2)
    night = nights.add()

    drift = night_drift(session, night, settings=DEFAULTS)

    assert (drift.night_photos, drift.baseline_photos, drift.baseline_nights) == (100, 1000, 5)
    for level in drift.levels.values():
        assert level.psi < 1e-9
        assert level.chi2_p_value > 0.99
        assert level.confidence_ks < 1e-9
        assert level.confidence_ks_p_value > 0.99
        assert not level.drifted
    main, sub = drift.levels["main"], drift.levels["sub"]
    assert [(s.category, s.night, s.baseline) for s in main.mix] == [
        ("tops", 90, 900),
        ("bottoms", 10, 100),
    ]
    assert [(s.category, s.night_share, s.baseline_share) for s in sub.mix] == [
        ("tops/shirt", 0.6, 0.6),
        ("tops/sweater", 0.3, 0.3),
        ("bottoms/jeans", 0.1, 0.1),
    ]


def test_a_staged_shift_is_above_the_threshold_with_a_tiny_p_value(session, nights):
    for _ in range(5):
        nights.add(repeat=2)
    night = nights.add(SHIFTED, repeat=10)

    drift = night_drift(session, night, settings=DEFAULTS)

    main, sub = drift.levels["main"], drift.levels["sub"]
    assert sub.psi == pytest.approx(psi([(0.2, 0.6), (0.3, 0.3), (0.5, 0.1)]))
    assert main.psi == pytest.approx(psi([(0.5, 0.9), (0.5, 0.1)]))
    for level in (main, sub):
        assert level.psi > DEFAULTS.drift_psi_threshold
        assert level.chi2_p_value < 1e-50
        assert level.drifted
    # The confidences were drawn alike: only the mix moved.
    assert sub.confidence_ks < 0.05 and sub.confidence_ks_p_value > 0.5
    assert [s.category for s in sub.mix] == ["tops/shirt", "tops/sweater", "bottoms/jeans"]


def test_a_category_absent_on_one_side_counts_at_epsilon(session, nights):
    nights.add(repeat=3)
    night = nights.add({"tops/shirt": 60, "tops/sweater": 30, "bottoms/skirt": 10})

    sub = night_drift(session, night, settings=DEFAULTS).levels["sub"]

    assert [(s.category, s.night, s.baseline) for s in sub.mix] == [
        ("tops/shirt", 60, 180),
        ("tops/sweater", 30, 90),
        ("bottoms/jeans", 0, 30),
        ("bottoms/skirt", 10, 0),
    ]
    assert sub.psi == pytest.approx(psi([(EPSILON, 0.1), (0.1, EPSILON)]))
    assert sub.drifted
    assert night_drift(session, night, settings=DEFAULTS).levels["main"].psi < 1e-9


def test_a_large_shift_on_a_small_night_is_not_drift_until_it_is_significant(session, nights):
    for _ in range(10):
        nights.add({"tops/shirt": 50, "bottoms/jeans": 50}, repeat=10)
    small = nights.add({"tops/shirt": 8, "bottoms/jeans": 2})

    drift = night_drift(session, small, settings=DEFAULTS).levels["sub"]
    assert drift.psi == pytest.approx(psi([(0.8, 0.5), (0.2, 0.5)]))
    assert drift.psi > DEFAULTS.drift_psi_threshold
    assert DEFAULTS.drift_p_value < drift.chi2_p_value < 0.1  # 10 photos: could be chance
    assert not drift.drifted

    large = nights.add({"tops/shirt": 8, "bottoms/jeans": 2}, repeat=20)
    drift = night_drift(session, large, settings=DEFAULTS).levels["sub"]
    # Its baseline holds the small night too: 5,008 of 10,010 photos shirts.
    assert drift.psi == pytest.approx(psi([(0.8, 5008 / 10010), (0.2, 5002 / 10010)]))
    assert drift.chi2_p_value < DEFAULTS.drift_p_value
    assert drift.drifted


def test_only_finished_nights_and_their_ok_photos_make_the_baseline(session, nights):
    odd = {"bottoms/skirt": 500}
    first = nights.add(failed=odd)
    nights.add(odd, status=SweepStatus.SKIPPED)
    nights.add(odd, status=SweepStatus.ABANDONED)
    nights.add({}, failed=odd)  # a finished night without a photo classified
    second = nights.add(repeat=2, failed=odd)
    nights.add(odd, status=SweepStatus.RUNNING)
    night = nights.add(failed=odd)
    nights.add(odd)  # a later night

    drift = night_drift(session, night, settings=DEFAULTS)

    assert baseline_nights(session, night, last=28) == [second, first]
    assert (drift.night_photos, drift.baseline_photos, drift.baseline_nights) == (100, 300, 2)
    assert {s.category for s in drift.levels["sub"].mix} == set(MIX)
    assert drift.levels["sub"].psi < 1e-9
    assert drift.levels["main"].confidence_ks < 1e-9


def test_the_baseline_is_the_newest_nights_up_to_the_setting(session, nights):
    small = {"tops/shirt": 6, "tops/sweater": 3, "bottoms/jeans": 1}
    for _ in range(7):
        nights.add({"bottoms/jeans": 10})
    newest = [nights.add(small) for _ in range(28)]
    night = nights.add(small)

    drift = night_drift(session, night, settings=DEFAULTS)
    assert DEFAULTS.drift_baseline_nights == 28
    assert (drift.baseline_nights, drift.baseline_photos) == (28, 280)
    assert drift.levels["sub"].psi < 1e-9
    assert baseline_nights(session, night, last=28) == newest[::-1]

    wider = night_drift(session, night, settings=Settings(drift_baseline_nights=30))
    assert (wider.baseline_nights, wider.baseline_photos) == (30, 300)
    assert wider.levels["sub"].psi > 0.01
    narrow = night_drift(session, night, settings=Settings(drift_baseline_nights=3))
    assert (narrow.baseline_nights, narrow.baseline_photos) == (3, 30)


def test_no_baseline_or_no_photos_means_no_drift(session, nights):
    first = nights.add()
    assert night_drift(session, first, settings=DEFAULTS) is None  # nothing before it
    nights.add()
    empty = nights.add({}, failed={"tops/shirt": 20})
    assert night_drift(session, empty, settings=DEFAULTS) is None
    assert night_drift(session, 10_000, settings=DEFAULTS) is None  # no such sweep
    assert confidence_histogram(session, empty, "sub", bins=4) == [0, 0, 0, 0]


def test_ks_detects_shifted_confidences_and_not_equal_ones(session, nights):
    rng = np.random.default_rng(7)
    for _ in range(5):
        nights.add(repeat=10, confidences=lambda n: rng.uniform(0.5, 1.0, n))
    alike = nights.add(repeat=10, confidences=lambda n: rng.uniform(0.5, 1.0, n))
    shifted = nights.add(repeat=10, confidences=lambda n: rng.uniform(0.4, 0.9, n))

    for level in night_drift(session, alike, settings=DEFAULTS).levels.values():
        assert level.confidence_ks < 0.05
        assert level.confidence_ks_p_value > 0.05
    # The shifted night's baseline holds the alike night too: six nights of 1,000 photos.
    drift = night_drift(session, shifted, settings=DEFAULTS)
    assert drift.baseline_nights == 6
    for level in drift.levels.values():
        assert level.confidence_ks == pytest.approx(0.2, abs=0.04)
        assert level.confidence_ks_p_value < 1e-20
        assert level.psi < 1e-9  # the mix is the same: the confidences alone moved
        assert level.confidence_drifted and not level.mix_drifted
        assert level.drifted
    # The statistic must pass its own threshold as well as the p-value its own.
    wide = Settings(drift_ks_threshold=0.3)
    for level in night_drift(session, shifted, settings=wide).levels.values():
        assert not level.drifted
    strict = Settings(drift_p_value=1e-40)
    for level in night_drift(session, shifted, settings=strict).levels.values():
        assert not level.drifted


def test_a_small_shift_on_many_photos_is_significant_but_no_drift(session, nights):
    """With thousands of photos a night a shift of the confidences nobody would act on has
    a tiny p-value: the KS statistic's threshold keeps it from counting as drift."""
    rng = np.random.default_rng(11)
    for _ in range(5):
        nights.add(repeat=50, confidences=lambda n: rng.uniform(0.5, 1.0, n))
    nudged = nights.add(repeat=50, confidences=lambda n: rng.uniform(0.52, 1.02, n).clip(0, 1))

    for level in night_drift(session, nudged, settings=DEFAULTS).levels.values():
        assert 0.02 < level.confidence_ks < DEFAULTS.drift_ks_threshold
        assert level.confidence_ks_p_value < DEFAULTS.drift_p_value
        assert not level.confidence_drifted and not level.drifted


def test_the_binned_ks_is_scipys_for_confidences_at_bin_centres(session, nights):
    rng = np.random.default_rng(3)
    drawn: dict[str, list[np.ndarray]] = {"baseline": [], "night": []}

    def centres(side: str, low: int):
        def draw(n: int) -> np.ndarray:
            drawn[side].append((rng.integers(low, 1000, n) + 0.5) / 1000)
            return drawn[side][-1]

        return draw

    for _ in range(3):
        nights.add(repeat=4, confidences=centres("baseline", 300))
    night = nights.add(repeat=2, confidences=centres("night", 150))

    main = night_drift(session, night, settings=DEFAULTS).levels["main"]

    expected = ks_2samp(*map(np.concatenate, drawn.values()), method="asymp")
    assert main.confidence_ks == pytest.approx(expected.statistic, abs=1e-12)
    assert main.confidence_ks_p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert main.confidence_ks_p_value < 0.01


def test_a_trend_of_nights_is_each_nights_drift(session, nights):
    rng = np.random.default_rng(5)
    ids = [nights.add(repeat=2)]
    ids += [nights.add(failed=MIX), nights.add(SHIFTED), nights.add({}, failed=MIX)]
    ids += [nights.add(repeat=3, confidences=lambda n: rng.uniform(0.3, 1.0, n))]
    settings = Settings(drift_baseline_nights=2)

    trend = nights_drift(session, ids, settings=settings)

    assert list(trend) == ids
    assert trend == {night: night_drift(session, night, settings=settings) for night in ids}
    assert trend[ids[0]] is None and trend[ids[3]] is None  # no baseline; no photos
    assert trend[ids[2]].levels["sub"].drifted
    assert trend[ids[4]].baseline_nights == 2


def test_the_confidence_histogram_counts_the_nights_ok_photos_per_bin(session, nights):
    values = iter([0.0, 0.1, 0.24, 0.26, 0.6, 0.74, 0.99, 1.0])
    other = nights.add()
    night = nights.add(
        {"tops/shirt": 8}, confidences=lambda n: [next(values) for _ in range(n)], failed=MIX
    )

    assert confidence_histogram(session, night, "main", bins=4) == [3, 1, 2, 2]
    # The sub confidences are 0.9 of the main ones: 0.234 and 0.9 fall a bin lower.
    assert confidence_histogram(session, night, "sub", bins=4) == [4, 0, 2, 2]
    assert sum(confidence_histogram(session, other, "sub")) == 100
    assert len(confidence_histogram(session, other, "sub")) == 20
    with pytest.raises(ValueError, match="level must be one of main, sub, not 'both'"):
        confidence_histogram(session, night, "both")
    with pytest.raises(ValueError, match="bins must be at least 1"):
        confidence_histogram(session, night, "main", bins=0)
