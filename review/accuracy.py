"""How accurate the sorting is on live photos, measured from the review desk's decisions.

Each night (sweep) splits into two strata: the photos flagged for review and the confident
ones. The confident ones are measured by their blind audit sample (``refund_sorter.audit``),
the flagged ones by the reviewers' decisions on them. Figures, each with a 95% interval:

- *unflagged accuracy*: how often the model is right on the photos nobody reviews, from the
  decided audits; main and sub category, overall and per predicted main category. Wilson's
  score interval, or the exact Clopper-Pearson interval under ``stats.SMALL`` decided audits.
- *corrected*: the share of the decided flagged photos whose reviewer chose another
  category than the model.
- *model accuracy* and *accuracy as filed after review*, stratified
  (``refund_sorter.stats.stratified``): each stratum's figure weighted by its share of the
  night's photos. As filed, a photo's category is the reviewer's where there is one (right by
  definition), the model's elsewhere; the model's accuracy on a stratum's undecided photos is
  estimated from its decided ones.

Over several nights (the trailing window) every night's strata are strata of the one
estimate. A stratum with photos and no decided one has no estimate: the value is over the
others, and the interval counts its photos anywhere from 0 to 100% right (the method says
what share of the photos that is). A night is
*provisional* while some of its audits are undecided: the desk orders by doubt, so a
half-decided night is not a random sample of its flagged photos, and its audits decided so
far may not be either.
"""

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time

from sqlalchemy import Select, and_, case, exists, func, select
from sqlalchemy.orm import Session

from models import ItemStatus, Prediction, SweepRun
from refund_sorter import stats
from refund_sorter.crud import as_utc, latest_reviews

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


def proportion(k: int, n: int) -> Estimate:
    """``k`` of ``n``, with Wilson's interval, or the exact one for fewer than SMALL."""
    if n == 0:
        return Estimate(None, None, None, 0, WILSON)
    low, high, method = stats.binomial_interval(k, n)
    return Estimate(k / n, low, high, n, method)


@dataclass(frozen=True)
class Stratum:
    size: float  # photos in the stratum
    labelled: int  # of which a person decided (at random, for the estimate to hold)
    correct: int  # of those, how many the model had right
    # Strata of one group (every night's unflagged photos) share their variance's proportion.
    group: str = ""


def stratified(strata: Iterable[Stratum], *, filed: bool) -> Estimate:
    """The model's accuracy over the strata (``filed``: the accuracy as filed after review,
    decided photos counting as right), each stratum weighted by its size
    (``refund_sorter.stats.stratified``). Where some strata have photos and no decided one,
    the method says what share of the photos is counted anywhere from 0 to 100%."""
    found = stats.stratified(
        ((s.size, s.labelled, s.correct, s.group or str(i)) for i, s in enumerate(strata)),
        filed=filed,
    )
    method = STRATIFIED
    if found.value is not None and found.unknown:
        method = f"{STRATIFIED}, {100 * found.unknown:.1f}% undecided counted 0-100%"
    return Estimate(found.value, found.low, found.high, found.labelled, method)


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
            Stratum(
                self.flagged,
                self.flagged_decided,
                getattr(self, f"flagged_right_{level}"),
                "flagged",
            ),
            Stratum(
                self.photos - self.flagged,
                self.audits_decided,
                getattr(self, f"audits_right_{level}"),
                "unflagged",
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
