"""Drift: how far a night's predictions moved from its baseline, the nights before it.

Owns the drift figures the metrics endpoint, the desk's Nights pages and the night report
show: per level (main and sub category) the PSI of the category mix, the chi-square test's
p-value, the Kolmogorov-Smirnov statistic of the confidences with its p-value, and whether
the night ``drifted`` (its category mix, or its confidences). Every count comes from the
database (GROUP BY), never one row per photo. What the baseline is, what each figure means
and how to read a drifted night: docs/drift.md.
"""

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import ColumnElement, FunctionElement, Integer, exists, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session

from models import ItemStatus, Prediction, SweepRun, SweepStatus
from refund_sorter.config import Settings, get_settings

LEVELS = ("main", "sub")
EPSILON = 1e-4  # the share taken for a category absent on one side of the PSI
KS_BINS = 1000  # confidences binned at 0.001 for the KS statistic

_CONFIDENCE = {"main": Prediction.main_confidence, "sub": Prediction.sub_confidence}


@dataclass(frozen=True)
class Share:
    """One category in a mix: main ``"footwear"``, sub ``"footwear/shoes"``."""

    category: str
    night: int  # photos of the night
    baseline: int  # photos of the baseline nights
    night_share: float
    baseline_share: float


@dataclass(frozen=True)
class LevelDrift:
    level: str  # "main" or "sub"
    psi: float  # population stability index, night against baseline
    chi2_p_value: float  # chi-square test of homogeneity of the two mixes
    confidence_ks: float  # two-sample KS statistic of the level's confidences
    confidence_ks_p_value: float
    mix: tuple[Share, ...]  # every category seen in either, largest baseline first
    mix_drifted: bool  # psi above its threshold and chi2_p_value below the p-value setting
    confidence_drifted: bool  # confidence_ks above its threshold and its p-value below

    @property
    def drifted(self) -> bool:
        return self.mix_drifted or self.confidence_drifted


@dataclass(frozen=True)
class NightDrift:
    sweep_run_id: int
    night_photos: int  # ok photos of the night
    baseline_photos: int  # ok photos of the baseline nights
    baseline_nights: int
    levels: dict[str, LevelDrift]  # "main", "sub"


def night_drift(
    session: Session, sweep_run_id: int, *, settings: Settings | None = None
) -> NightDrift | None:
    """The drift of one night (the last finished one, say; a running one gives its figures so
    far) against its baseline; None when the night has no ok photos or there is no baseline
    night."""
    return nights_drift(session, [sweep_run_id], settings=settings)[sweep_run_id]


def nights_drift(
    session: Session, sweep_run_ids: Iterable[int], *, settings: Settings | None = None
) -> dict[int, NightDrift | None]:
    """``night_drift`` of several nights at once (a trend), by id: each count is taken once
    for all of them, their baselines overlapping as they do."""
    settings = settings or get_settings()
    last = settings.drift_baseline_nights
    baselines = {night: baseline_nights(session, night, last=last) for night in sweep_run_ids}
    sweeps = sorted({s for night, base in baselines.items() if base for s in (night, *base)})
    if not sweeps:
        return dict.fromkeys(baselines)
    mixes: dict[int, Counter] = defaultdict(Counter)  # by sweep: photos by (main, sub)
    for sweep, main, sub, n in _counts(
        session, sweeps, Prediction.main_category, Prediction.sub_category
    ):
        mixes[sweep][main, sub] = n
    confidences = {level: _binned(session, sweeps, _CONFIDENCE[level], KS_BINS) for level in LEVELS}
    found: dict[int, NightDrift | None] = {}
    for night, base in baselines.items():
        if not base or not mixes[night]:
            found[night] = None
            continue
        baseline = sum((mixes[s] for s in base), Counter())
        found[night] = NightDrift(
            sweep_run_id=night,
            night_photos=mixes[night].total(),
            baseline_photos=baseline.total(),
            baseline_nights=len(base),
            levels={
                level: _level_drift(
                    level,
                    _by_level(mixes[night], level),
                    _by_level(baseline, level),
                    confidences[level][night],
                    sum(confidences[level][s] for s in base),
                    settings,
                )
                for level in LEVELS
            },
        )
    return found


def baseline_nights(session: Session, sweep_run_id: int, *, last: int) -> list[int]:
    """The ids of a night's baseline, newest first: the up to ``last`` finished sweeps with
    at least one ok photo that started before it."""
    started = select(SweepRun.started_at).where(SweepRun.id == sweep_run_id).scalar_subquery()
    has_photos = exists().where(
        Prediction.sweep_run_id == SweepRun.id, Prediction.status == ItemStatus.OK
    )
    return list(
        session.scalars(
            select(SweepRun.id)
            .where(SweepRun.status == SweepStatus.FINISHED, SweepRun.started_at < started)
            .where(has_photos)
            .order_by(SweepRun.started_at.desc(), SweepRun.id.desc())
            .limit(last)
        )
    )


def confidence_histogram(
    session: Session, sweep_run_id: int, level: str, bins: int = 20
) -> list[int]:
    """Counts of the night's ok photos per confidence bin: ``bins`` equal bins on [0, 1],
    each holding its lower edge, the last one 1 too."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, not {bins}")
    found = _binned(session, [sweep_run_id], _CONFIDENCE[level], bins)
    return found[sweep_run_id].tolist()


def _by_level(mix: Counter, level: str) -> Counter:
    """Photos by (main, sub) as photos by main category, or by "main/sub"."""
    found: Counter = Counter()
    for (main, sub), n in mix.items():
        found[main if level == "main" else f"{main}/{sub}"] += n
    return found


def _level_drift(
    level: str,
    night: Counter,
    baseline: Counter,
    night_confidences: np.ndarray,
    baseline_confidences: np.ndarray,
    settings: Settings,
) -> LevelDrift:
    n, m = night.total(), baseline.total()
    categories = sorted(night.keys() | baseline.keys(), key=lambda c: (-baseline[c], -night[c], c))
    mix = tuple(Share(c, night[c], baseline[c], night[c] / n, baseline[c] / m) for c in categories)
    p = np.maximum([s.night_share for s in mix], EPSILON)
    q = np.maximum([s.baseline_share for s in mix], EPSILON)
    psi = float(np.sum((p - q) * np.log(p / q)))
    chi2_p = _homogeneity_p_value([[s.night for s in mix], [s.baseline for s in mix]])
    ks, ks_p = _two_sample_ks(night_confidences, baseline_confidences)
    return LevelDrift(
        level=level,
        psi=psi,
        chi2_p_value=chi2_p,
        confidence_ks=ks,
        confidence_ks_p_value=ks_p,
        mix=mix,
        mix_drifted=psi > settings.drift_psi_threshold and chi2_p < settings.drift_p_value,
        # Both, as for the mix: on thousands of photos a night a shift nobody would act on
        # is significant, and on a small night a large statistic can be chance.
        confidence_drifted=ks > settings.drift_ks_threshold and ks_p < settings.drift_p_value,
    )


def _homogeneity_p_value(table: list[list[int]]) -> float:
    # scipy.stats takes most of a second to import: only the callers of drift pay for it.
    from scipy.stats import chi2_contingency

    # Pearson's statistic as it is (no Yates correction), like the PSI beside it.
    return float(chi2_contingency(table, correction=False).pvalue)


def _two_sample_ks(night: np.ndarray, baseline: np.ndarray) -> tuple[float, float]:
    """The KS statistic of two binned samples and its p-value, as scipy.stats.ks_2samp's
    asymptotic mode takes it: Kolmogorov's distribution at the effective sample size
    n m / (n + m), valid for large samples (a night holds hundreds of photos and more)."""
    from scipy.stats import distributions

    n, m = int(night.sum()), int(baseline.sum())
    statistic = float(np.max(np.abs(np.cumsum(night) / n - np.cumsum(baseline) / m)))
    effective = max(1, round(n * m / (n + m)))
    return statistic, float(distributions.kstwo.sf(statistic, effective))


def _binned(
    session: Session, sweeps: list[int], confidence: ColumnElement, bins: int
) -> dict[int, np.ndarray]:
    """The ok photos of each of ``sweeps`` (sorted) counted by confidence in ``bins`` equal
    bins on [0, 1]; a confidence of exactly 1 goes into the last bin."""
    counts = np.zeros((len(sweeps), bins), dtype=np.int64)
    rows = np.array(_counts(session, sweeps, _floor(confidence * bins)), dtype=np.int64)
    if len(rows):
        sweep, index, n = rows.T
        np.add.at(counts, (np.searchsorted(sweeps, sweep), np.minimum(index, bins - 1)), n)
    return dict(zip(sweeps, counts, strict=True))


def _counts(session: Session, sweeps: list[int], *keys: ColumnElement) -> list[tuple]:
    """(sweep, *keys, photos) for the ok photos of ``sweeps``, in one GROUP BY. An ok row
    always has its categories and confidences; one without would count nowhere."""
    rows = (
        select(Prediction.sweep_run_id, *(key.label(f"key{i}") for i, key in enumerate(keys)))
        .where(Prediction.status == ItemStatus.OK, Prediction.sweep_run_id.in_(sweeps))
        .where(*(key.is_not(None) for key in keys))
        .subquery()
    )
    # Grouped outside the subquery that names the keys: PostgreSQL cannot tell that two bound
    # parameters are one, so a key holding one would not match itself in GROUP BY.
    columns = list(rows.c)
    query = select(*columns, func.count()).group_by(*columns)
    # Core, not the ORM: tens of thousands of bins come back, and they are plain numbers.
    return [tuple(row) for row in session.connection().execute(query)]


class _floor(FunctionElement):
    """FLOOR(x): a bin number. On SQLite, whose FLOOR exists only where it was built with its
    math functions, a cast to INTEGER, which truncates: the same for confidences, never
    negative."""

    type = Integer()
    inherit_cache = True


@compiles(_floor)
def _floor_sql(element, compiler, **kw) -> str:
    return f"FLOOR({compiler.process(element.clauses, **kw)})"


@compiles(_floor, "sqlite")
def _floor_sqlite(element, compiler, **kw) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS INTEGER)"
