"""How accurate the sorting is on live photos, measured from the review desk's decisions.

Each night (sweep) splits into two strata: the photos flagged for review and the confident
ones. The confident ones are measured by their blind audit sample (``refund_sorter.audit``),
the flagged ones by the reviewers' decisions on them. Figures, each with a 95% interval:

- *unflagged accuracy*: how often the model is right on the photos nobody reviews, from the
  decided audits; main and sub category, overall and per predicted main category. Wilson's
  score interval, or the exact Clopper-Pearson interval under ``SMALL`` decided audits.
- *corrected*: the share of the decided flagged photos whose reviewer chose another
  category than the model.
- *model accuracy* and *accuracy as filed after review*, stratified: each stratum's figure
  weighted by its share of the night's photos. As filed, a photo's category is the
  reviewer's where there is one (right by definition), the model's elsewhere; the model's
  accuracy on a stratum's undecided photos is estimated from its decided ones. The
  variance is the stratified one, V = sum of W_h^2 (1 - n_h/N_h) s_h^2, with s_h^2 the
  variance of the stratum's proportion taken from its Wilson interval (half its width over
  1.96, squared: never zero, unlike p(1-p)/n at p = 1). The interval is Wilson's at the
  effective sample size n_eff = p(1-p)/V (Kish's design effect), which keeps its coverage
  near 95% where a normal interval falls short near 100%.

Over several nights (the trailing window) every night's strata are strata of the one
estimate. A stratum without a decided photo has no estimate; it is left out and the weights
of the others renormalised, which the coverage (decided of drawn) shows. A night is
*provisional* while some of its audits are undecided: the desk orders by doubt, so a
half-decided night is not a random sample of its flagged photos, and its audits decided so
far may not be either.
"""

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time

from sqlalchemy import Select, and_, case, exists, func, select
from sqlalchemy.orm import Session

from models import ItemStatus, Prediction, SweepRun
from refund_sorter.crud import as_utc, latest_reviews

Z = 1.959963984540054  # the standard normal's 97.5% quantile: 95% intervals
SMALL = 30  # below this many labels a proportion gets the exact interval
WINDOW = 28  # nights in the trailing window unless told otherwise
WILSON, EXACT, STRATIFIED = "wilson", "clopper-pearson", "stratified"


@dataclass(frozen=True)
class Estimate:
    """A proportion with its 95% interval, from ``n`` decided photos (no value without)."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    method: str


def wilson(k: float, n: float) -> tuple[float, float]:
    """Wilson's score interval for ``k`` successes in ``n`` trials (``n`` may be an
    effective sample size, and ``k`` fractional)."""
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _binomial_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def _solve(f, target: float) -> float:
    """The p in [0, 1] where the decreasing ``f`` crosses ``target``, by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval for ``k`` successes in ``n`` trials."""
    alpha = 1 - 0.95
    # low: P(X >= k) = alpha/2, that is P(X <= k - 1) = 1 - alpha/2; high: P(X <= k) = alpha/2.
    low = 0.0 if k == 0 else _solve(lambda p: _binomial_cdf(k - 1, n, p), 1 - alpha / 2)
    high = 1.0 if k == n else _solve(lambda p: _binomial_cdf(k, n, p), alpha / 2)
    return low, high


def proportion(k: int, n: int) -> Estimate:
    """``k`` of ``n``, with Wilson's interval, or the exact one for fewer than SMALL."""
    if n == 0:
        return Estimate(None, None, None, 0, WILSON)
    low, high = clopper_pearson(k, n) if n < SMALL else wilson(k, n)
    return Estimate(k / n, low, high, n, EXACT if n < SMALL else WILSON)


@dataclass(frozen=True)
class Stratum:
    size: int  # photos in the stratum
    labelled: int  # of which a person decided (at random, for the estimate to hold)
    correct: int  # of those, how many the model had right


def stratified(strata: Iterable[Stratum], *, filed: bool) -> Estimate:
    """The model's accuracy over the strata (``filed``: the accuracy as filed after review,
    decided photos counting as right), each stratum weighted by its size."""
    known = [s for s in strata if s.labelled and s.size]
    total = sum(s.size for s in known)
    if not total:
        return Estimate(None, None, None, 0, STRATIFIED)
    value = variance = 0.0
    for s in known:
        weight, share = s.size / total, min(1.0, s.labelled / s.size)
        p = s.correct / s.labelled
        low, high = wilson(s.correct, s.labelled)
        value += weight * (share + (1 - share) * p if filed else p)
        variance += weight**2 * (1 - share) * ((high - low) / (2 * Z)) ** 2
    n = sum(s.labelled for s in known)
    if variance == 0:  # every photo decided: known exactly
        return Estimate(value, value, value, n, STRATIFIED)
    if 0 < value < 1:
        # Wilson's interval at the effective sample size (Kish): the normal one around the
        # estimate would stray below the truth near 100%, where the strata's errors skew.
        effective = value * (1 - value) / variance
        low, high = wilson(value * effective, effective)
    else:
        half = Z * math.sqrt(variance)
        low, high = value - half, value + half
    return Estimate(value, max(0.0, low), min(1.0, high), n, STRATIFIED)


@dataclass
class Counts:
    """One night's tallies (or one predicted main category's, or a window's)."""

    photos: int = 0  # classified
    flagged: int = 0
    flagged_decided: int = 0
    flagged_right_main: int = 0  # decided flagged photos the model had right
    flagged_right_sub: int = 0
    audits: int = 0  # drawn
    audits_decided: int = 0
    audits_right_main: int = 0
    audits_right_sub: int = 0

    def add(self, other: "Counts") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def strata(self, level: str) -> list[Stratum]:
        """The flagged and the unflagged stratum, for the main or the sub category."""
        return [
            Stratum(self.flagged, self.flagged_decided, getattr(self, f"flagged_right_{level}")),
            Stratum(
                self.photos - self.flagged,
                self.audits_decided,
                getattr(self, f"audits_right_{level}"),
            ),
        ]


@dataclass
class Figures:
    """Every figure of one night, or of the window."""

    counts: Counts
    provisional: bool
    unflagged_main: Estimate
    unflagged_sub: Estimate
    corrected: Estimate  # share of the decided flagged photos the reviewers corrected
    model_main: Estimate
    model_sub: Estimate
    filed_main: Estimate
    filed_sub: Estimate
    # Unflagged accuracy (main, sub) per predicted main category.
    by_main: dict[str, tuple[Estimate, Estimate]] = field(default_factory=dict)


@dataclass
class NightAccuracy:
    """One night's accuracy figures, from its blind audit: a row of the accuracy report."""

    sweep: int
    started_at: datetime
    figures: Figures


@dataclass
class Report:
    since: date | None  # None: the last WINDOW nights
    nights: list[NightAccuracy]  # newest first
    window: Figures


def figures(nights: Sequence[tuple[Counts, dict[str, Counts]]]) -> Figures:
    """The figures of one night or more: each night's counts, in total and per predicted
    main category. Several nights are pooled for the single proportions and are strata of
    their own for the stratified estimates."""
    total, per_main = Counts(), defaultdict(Counts)
    for counts, by_main in nights:
        total.add(counts)
        for main, c in by_main.items():
            per_main[main].add(c)
    several = len(nights) != 1

    def unflagged(of: Iterable[Counts], level: str) -> Estimate:
        of = list(of)
        if not several:
            (c,) = of
            return proportion(getattr(c, f"audits_right_{level}"), c.audits_decided)
        return stratified((c.strata(level)[1] for c in of), filed=False)

    def both(level: str, *, filed: bool) -> Estimate:
        return stratified((s for c, _ in nights for s in c.strata(level)), filed=filed)

    return Figures(
        counts=total,
        provisional=total.audits_decided < total.audits,
        unflagged_main=unflagged((c for c, _ in nights), "main"),
        unflagged_sub=unflagged((c for c, _ in nights), "sub"),
        corrected=proportion(
            total.flagged_decided - total.flagged_right_sub, total.flagged_decided
        ),
        model_main=both("main", filed=False),
        model_sub=both("sub", filed=False),
        filed_main=both("main", filed=True),
        filed_sub=both("sub", filed=True),
        by_main={
            main: tuple(
                unflagged((m[main] for _, m in nights if main in m), level)
                for level in ("main", "sub")
            )
            for main in sorted(per_main)
        },
    )


def window(*, since: date | None = None, last: int = WINDOW) -> Select:
    """The ids of the nights (sweeps) with classified photos started on or after ``since``
    (UTC), or else of the ``last`` ones, newest first."""
    # EXISTS, not a join grouped by night: the newest nights are found by probing the index
    # on (sweep_run_id, status) once each, not by counting every night's photos.
    has_photos = exists().where(
        Prediction.sweep_run_id == SweepRun.id, Prediction.status == ItemStatus.OK
    )
    nights = select(SweepRun.id).where(has_photos).order_by(SweepRun.id.desc())
    if since is not None:
        return nights.where(SweepRun.started_at >= datetime.combine(since, time.min, tzinfo=UTC))
    return nights.limit(last)


def night_counts(
    session: Session,
    *,
    since: date | None = None,
    last: int = WINDOW,
    sweeps: Collection[int] | None = None,
) -> list[tuple[int, datetime, Counts, dict[str, Counts]]]:
    """Each night's counts, in total and per predicted main category, newest first: the
    nights ``sweeps`` (ids) when given, else those started on or after ``since`` (UTC), or
    else the ``last`` ones with photos."""
    review = latest_reviews()
    decided = review.c.prediction_id.is_not(None)
    right_main = and_(decided, review.c.main_category == Prediction.main_category)
    right_sub = and_(right_main, review.c.sub_category == Prediction.sub_category)
    # The nights' ids first, as values: PostgreSQL then reads only their photos through the
    # index on (sweep_run_id, status), which holds every column counted here.
    nights = (
        sorted(sweeps)
        if sweeps is not None
        else list(session.scalars(window(since=since, last=last)))
    )
    rows = session.execute(
        select(
            SweepRun.id,
            SweepRun.started_at,
            Prediction.needs_review,
            Prediction.audited,
            Prediction.main_category,
            func.count(),
            func.count(review.c.prediction_id),
            func.sum(case((right_main, 1), else_=0)),
            func.sum(case((right_sub, 1), else_=0)),
        )
        .join(Prediction, Prediction.sweep_run_id == SweepRun.id)
        .outerjoin(review, review.c.prediction_id == Prediction.id)
        .where(Prediction.status == ItemStatus.OK, Prediction.sweep_run_id.in_(nights))
        .group_by(
            SweepRun.id,
            SweepRun.started_at,
            Prediction.needs_review,
            Prediction.audited,
            Prediction.main_category,
        )
    )
    found: dict[int, tuple[datetime, dict[str, Counts]]] = {}
    for sweep, started, flagged, audited, main, n, n_decided, n_main, n_sub in rows:
        c = found.setdefault(sweep, (as_utc(started), defaultdict(Counts)))[1][main]
        c.photos += n
        if flagged:
            c.flagged += n
            c.flagged_decided += n_decided
            c.flagged_right_main += n_main
            c.flagged_right_sub += n_sub
        elif audited:
            c.audits += n
            c.audits_decided += n_decided
            c.audits_right_main += n_main
            c.audits_right_sub += n_sub
    result = []
    for sweep in sorted(found, reverse=True):
        started, by_main = found[sweep]
        total = Counts()
        for c in by_main.values():
            total.add(c)
        result.append((sweep, started, total, dict(by_main)))
    return result


def report(session: Session, *, since: date | None = None, last: int = WINDOW) -> Report:
    """The figures of each night (started on or after ``since``, or the last ``last``) and
    of all of them together."""
    counts = night_counts(session, since=since, last=last)
    nights = [
        NightAccuracy(sweep, started, figures([(total, by_main)]))
        for sweep, started, total, by_main in counts
    ]
    return Report(since, nights, figures([(total, by_main) for _, _, total, by_main in counts]))


def share(estimate: Estimate) -> str:
    """``93.1% [89.0-95.8%] n=120 wilson``, or ``n/a`` without a decided photo."""
    if estimate.value is None:
        return "n/a (nothing decided)"
    return (
        f"{100 * estimate.value:.1f}% [{100 * estimate.low:.1f}-{100 * estimate.high:.1f}%] "
        f"n={estimate.n} {estimate.method}"
    )
