"""What the desk's Nights pages read: the last nights at a glance and one night in full.

A night is a sweep run that was not skipped (another sweep was running, nothing was
scanned), dated by the day it started on in REFUND_SORTER_TIMEZONE; the last night is the
newest finished one. Everything is read with SQL aggregates (GROUP BY), never a loop over
rows in Python, and is read-only like ``queue``.

Each night's figures:

- photos by status: ``ok`` (classified), ``failed``, ``deferred`` (left for a later sweep:
  still being written), ``queued`` (not classified yet), and ``known`` (already classified
  before: the sweep counts them, no row of their own);
- the *flagged share*: of the photos classified, those flagged for review;
- the *failed share*: of the photos the night settled (classified or failed), those failed;
- the duration (started to finished) and the photos classified per second of it;
- the blind audit's accuracy on the unflagged photos (``review.accuracy``), with its
  interval and count;
- the drift of its category mix and confidences against the trailing nights
  (``refund_sorter.drift``).

A night without photos has no ratios (None, shown blank), never 0.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, cast, extract, func, select
from sqlalchemy.orm import Session

from models import ItemStatus, Prediction, SweepRun, SweepStatus
from refund_sorter import drift as drift_module
from refund_sorter.config import Settings
from refund_sorter.crud import as_utc
from refund_sorter.drift import LEVELS, NightDrift
from review import accuracy
from review.accuracy import Estimate, Figures

NIGHTS = 30  # nights on the Nights page
KNOWN = "known"  # photos classified before: counted by the sweep, no row of their own
STATUSES = (ItemStatus.OK, ItemStatus.FAILED, ItemStatus.DEFERRED, ItemStatus.QUEUED, KNOWN)
HISTOGRAM_BINS = 20
# The last night must have finished within this long: a sweep a night, and two hours for it
# to run late.
FINISHED_WITHIN = timedelta(hours=26)
# Throughput buckets: the shortest of these widths that splits the night into at most
# MAX_BUCKETS, so a plot of a long night stays readable.
BUCKET_WIDTHS = (60, 120, 300, 600, 900, 1800, 3600)
MAX_BUCKETS = 60
NO_REASON = "no reason recorded"


@dataclass(frozen=True)
class NightFigures:
    """One night's figures, as the Nights pages show them (listed above)."""

    sweep: int
    status: str  # running, finished or abandoned (skipped runs are no nights)
    model_version: str
    started_at: datetime  # UTC
    finished_at: datetime | None
    date: date  # the day it started on, in REFUND_SORTER_TIMEZONE
    photos: dict[str, int]  # by status, every one of STATUSES
    flagged: int  # classified photos flagged for review
    accuracy: Figures | None  # None: no classified photo
    drift: NightDrift | None  # None: no classified photo, or no baseline night before it

    @property
    def classified(self) -> int:
        return self.photos[ItemStatus.OK]

    @property
    def settled(self) -> int:
        """Photos the night classified or failed: the failed share's denominator."""
        return self.photos[ItemStatus.OK] + self.photos[ItemStatus.FAILED]

    @property
    def flagged_share(self) -> float | None:
        return self.flagged / self.classified if self.classified else None

    @property
    def failed_share(self) -> float | None:
        return failed_share(self.photos[ItemStatus.OK], self.photos[ItemStatus.FAILED])

    @property
    def duration_seconds(self) -> float | None:
        """From start to finish; None for a night that did not finish."""
        if self.finished_at is None or self.status != SweepStatus.FINISHED:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def images_per_second(self) -> float | None:
        seconds = self.duration_seconds
        return self.classified / seconds if self.classified and seconds else None

    @property
    def drifted(self) -> bool:
        return self.drift is not None and any(d.drifted for d in self.drift.levels.values())


def failed_share(ok: int, failed: int) -> float | None:
    """The failed share of a night whose rows hold ``ok`` classified and ``failed`` failed
    photos: of the photos it settled, those that failed; None when it settled none.

    The one definition, for the Nights pages and the metrics endpoint alike. It is counted
    from the night's rows, not from its sweep's counters (``sweep_runs.succeeded`` and
    ``failed``, which the same transactions keep equal to them): the rows are what the
    night's CSV and pages list, so the share is the one an operator can check against them,
    and it costs no more, as ``ix_predictions_sweep_status`` answers a night's count by
    status from the index alone and both readers count that night's rows for its flagged
    share anyway.
    """
    settled = ok + failed
    return failed / settled if settled else None


@dataclass(frozen=True)
class Failure:
    """Failed photos sharing a leading reason (the error text before its first ':' or ';')."""

    reason: str
    photos: int
    example: str  # one of their file names


@dataclass(frozen=True)
class Throughput:
    bucket_seconds: int
    buckets: list[tuple[datetime, int]]  # (bucket start, UTC; photos classified), no gaps


@dataclass(frozen=True)
class NightDetail:
    night: NightFigures
    failures: list[Failure]  # most photos first
    histograms: dict[str, list[int]]  # level -> classified photos per confidence bin on [0, 1]
    throughput: Throughput


@dataclass(frozen=True)
class Headline:
    """The answer at the top of the Nights page: did last night work, and is it still right?"""

    night: NightFigures | None  # the last finished night
    text: str
    warnings: list[str]


def _nights(
    session: Session, runs: list[SweepRun], settings: Settings, drift: bool
) -> list[NightFigures]:
    ids = [r.id for r in runs]
    counts: dict[int, dict[str, int]] = {i: dict.fromkeys(STATUSES, 0) for i in ids}
    flagged = dict.fromkeys(ids, 0)
    rows = session.execute(
        select(
            Prediction.sweep_run_id,
            Prediction.status,
            func.count(),
            func.count().filter(Prediction.needs_review),
        )
        .where(Prediction.sweep_run_id.in_(ids))
        .group_by(Prediction.sweep_run_id, Prediction.status)
    )
    for sweep, status, n, n_flagged in rows:
        counts[sweep][status] = n
        if status == ItemStatus.OK:
            flagged[sweep] = n_flagged
    audits = {
        sweep: accuracy.figures([(total, by_main)])
        for sweep, _, total, by_main in accuracy.night_counts(session, sweeps=ids)
    }
    # One pass over the counts for every night's drift, their baselines overlapping.
    drifts = drift_module.nights_drift(session, ids, settings=settings) if drift else {}
    zone = ZoneInfo(settings.timezone)
    nights = []
    for r in runs:
        counts[r.id][KNOWN] = r.known
        started = as_utc(r.started_at)
        nights.append(
            NightFigures(
                sweep=r.id,
                status=r.status,
                model_version=r.model_version,
                started_at=started,
                finished_at=as_utc(r.finished_at),
                date=started.astimezone(zone).date(),
                photos=counts[r.id],
                flagged=flagged[r.id],
                accuracy=audits.get(r.id),
                drift=drifts.get(r.id),
            )
        )
    return nights


def recent(
    session: Session, settings: Settings, *, last: int = NIGHTS, drift: bool = True
) -> list[NightFigures]:
    """The ``last`` nights, newest first; ``drift=False`` leaves their drift out (None), for
    a reader that does not show it."""
    runs = list(
        session.scalars(
            select(SweepRun)
            .where(SweepRun.status != SweepStatus.SKIPPED)
            .order_by(SweepRun.started_at.desc(), SweepRun.id.desc())
            .limit(last)
        )
    )
    return _nights(session, runs, settings, drift)


def last_finished(session: Session) -> int | None:
    """The sweep id of the last night: the newest finished sweep."""
    return session.scalar(
        select(SweepRun.id)
        .where(SweepRun.status == SweepStatus.FINISHED)
        .order_by(SweepRun.started_at.desc(), SweepRun.id.desc())
        .limit(1)
    )


def _before_any(text, separators: str, dialect: str):
    """SQL for ``text`` up to its first character of ``separators``, trimmed."""
    for sep in separators:
        if dialect == "postgresql":
            text = func.split_part(text, sep, 1)
        else:  # SQLite: instr finds the separator appended, so a text without one stays whole
            text = func.substr(text, 1, func.instr(text + sep, sep) - 1)
    return func.trim(text)


def failures(session: Session, sweep: int) -> list[Failure]:
    """The night's failed photos by leading reason: "corrupt or truncated image: broken data
    stream when reading image file" and "corrupt or truncated image: image file is
    truncated" are one reason, "corrupt or truncated image"."""
    reason = _before_any(
        func.coalesce(Prediction.error, NO_REASON), ":;", session.bind.dialect.name
    )
    failed = (
        select(reason.label("reason"), Prediction.file_name)
        .where(Prediction.sweep_run_id == sweep, Prediction.status == ItemStatus.FAILED)
        .subquery()
    )
    # Grouped outside the subquery that names the reason: PostgreSQL cannot tell that the
    # bound separators in SELECT and in GROUP BY are the same (as in refund_sorter.drift).
    rows = session.execute(
        select(failed.c.reason, func.count(), func.min(failed.c.file_name))
        .group_by(failed.c.reason)
        .order_by(func.count().desc(), failed.c.reason)
    )
    return [Failure(r or NO_REASON, n, example) for r, n, example in rows]


def throughput(session: Session, sweep: int) -> Throughput:
    """Photos classified per bucket of ``classified_at`` over the night."""
    classified = (Prediction.sweep_run_id == sweep, Prediction.status == ItemStatus.OK)
    seconds = cast(extract("epoch", Prediction.classified_at), BigInteger)
    first, final = session.execute(
        select(func.min(seconds), func.max(seconds)).where(*classified)
    ).one()
    if first is None:
        return Throughput(BUCKET_WIDTHS[0], [])
    span = final - first
    width = next((w for w in BUCKET_WIDTHS if span // w < MAX_BUCKETS), None)
    if width is None:  # longer than MAX_BUCKETS hours: whole hours
        width = 3600 * (span // (3600 * MAX_BUCKETS) + 1)
    buckets = select((seconds // width).label("bucket")).where(*classified).subquery()
    found = dict(
        session.execute(select(buckets.c.bucket, func.count()).group_by(buckets.c.bucket)).all()
    )
    start, end = first // width, final // width
    return Throughput(
        width,
        [(datetime.fromtimestamp(b * width, UTC), found.get(b, 0)) for b in range(start, end + 1)],
    )


def detail(session: Session, settings: Settings, sweep: int) -> NightDetail | None:
    """One night in full; None when there is no such night (no sweep, or a skipped one)."""
    run = session.get(SweepRun, sweep)
    if run is None or run.status == SweepStatus.SKIPPED:
        return None
    (night,) = _nights(session, [run], settings, drift=True)
    histograms = {
        level: drift_module.confidence_histogram(session, sweep, level, bins=HISTOGRAM_BINS)
        for level in LEVELS
    }
    return NightDetail(night, failures(session, sweep), histograms, throughput(session, sweep))


def percent(share: float | None) -> str:
    """``12.3%``, or blank for no ratio (a night without photos)."""
    return "" if share is None else f"{100 * share:.1f}%"


def interval_words(estimate: Estimate) -> str:
    """``93.3% [68.1-99.8%] n=15``: a proportion, its 95% interval and its count, short enough
    for a table cell (``accuracy.share`` adds the method); blank without a decided photo."""
    if estimate.value is None:
        return ""
    return (
        f"{100 * estimate.value:.1f}% [{100 * estimate.low:.1f}-{100 * estimate.high:.1f}%] "
        f"n={estimate.n}"
    )


def rate(per_second: float | None) -> str:
    """``35.2``, ``0.021``: photos per second with a figure that is never 0.0 for a slow night;
    blank without one."""
    if per_second is None:
        return ""
    return f"{per_second:.1f}" if per_second >= 1 else f"{per_second:.2g}"


def duration_words(seconds: float | None) -> str:
    """``42 s``, ``18 min``, ``3 h 05 min``; blank for a night that did not finish."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def drift_words(n: NightFigures) -> str:
    """ "drift ok", "drift over threshold", or why there is no figure."""
    if n.drift is None:
        return "no drift figure (no baseline night yet)" if n.classified else "no drift figure"
    psi = ", ".join(f"{level} PSI {d.psi:.2f}" for level, d in n.drift.levels.items())
    return f"drift over threshold ({psi})" if n.drifted else f"drift ok ({psi})"


def summary(n: NightFigures) -> str:
    """ "finished, 1,234 photos, 1.2% failed, 9.4% flagged, drift ok (...)"."""
    parts = [n.status, f"{n.settled:,} photos"]
    if n.settled:
        parts.append(f"{percent(n.failed_share)} failed")
        parts.append(f"{percent(n.flagged_share)} flagged" if n.classified else "none classified")
        parts.append(drift_words(n))
    return ", ".join(parts)


def concerns(n: NightFigures, settings: Settings) -> list[str]:
    """What is off with one night: not finished, too many failures, a drifted mix or drifted
    confidences."""
    found = []
    if n.status == SweepStatus.RUNNING:
        found.append(f"Sweep {n.sweep} is still running: its figures are not final.")
    elif n.status == SweepStatus.ABANDONED:
        found.append(
            f"Sweep {n.sweep} was abandoned (no progress for too long); its photos left queued "
            "went to a later sweep."
        )
    warn = settings.nights_failed_warning
    if n.failed_share is not None and n.failed_share > warn:
        found.append(
            f"{percent(n.failed_share)} of its photos failed, above the warning level of "
            f"{percent(warn)} (REFUND_SORTER_NIGHTS_FAILED_WARNING)."
        )
    if n.drift is not None:
        before = f"the {n.drift.baseline_nights} nights before it"
        levels = n.drift.levels.items()
        if mix := "; ".join(
            f"{level}: PSI {d.psi:.2f} above {settings.drift_psi_threshold:g}, chi-square "
            f"p = {d.chi2_p_value:.2g}"
            for level, d in levels
            if d.mix_drifted
        ):
            found.append(f"Its category mix drifted from {before} ({mix}).")
        if confidences := "; ".join(
            f"{level}: KS {d.confidence_ks:.2f} above {settings.drift_ks_threshold:g}, "
            f"p = {d.confidence_ks_p_value:.2g}"
            for level, d in levels
            if d.confidence_drifted
        ):
            found.append(f"Its confidences drifted from {before} ({confidences}).")
    return found


def headline(nights: list[NightFigures], settings: Settings, now: datetime) -> Headline:
    """The Nights page's answer, from the nights newest first (``recent``), and what is off:
    no finished night lately, a newer sweep that did not finish, too many failures, drift."""
    zone = ZoneInfo(settings.timezone)
    warnings = []
    # The returns counter's days are listed with the nights, but are no night: one open
    # since midnight is neither a night still running nor one abandoned.
    sweeps = [n for n in nights if n.status != SweepStatus.COUNTER]
    last = next((n for n in sweeps if n.status == SweepStatus.FINISHED), None)
    if sweeps and sweeps[0] is not last:
        newest = sweeps[0]
        state = "is still running" if newest.status == SweepStatus.RUNNING else "was abandoned"
        warnings.append(
            f"The newest sweep ({newest.sweep}, started "
            f"{newest.started_at.astimezone(zone):%Y-%m-%d %H:%M}) {state}."
        )
    if last is None:
        warnings.append("No night has finished yet.")
        return Headline(None, "No finished night yet.", warnings)
    if now - last.finished_at > FINISHED_WITHIN:
        warnings.append(
            f"No night finished in the last {FINISHED_WITHIN.total_seconds() / 3600:.0f} "
            f"hours: the last one finished {last.finished_at.astimezone(zone):%Y-%m-%d %H:%M}."
        )
    warnings += concerns(last, settings)
    return Headline(last, f"Last night ({last.date}): {summary(last)}", warnings)
