"""What the Prometheus endpoint reads: a collector that asks the database and the broker at
each scrape and keeps nothing between scrapes, so any number of workers and nights adds
nothing to it. Every series is a gauge; docs/monitoring.md lists them with their meaning.

Which sweeps count: the *last sweep* is the newest ``finished`` one (by start). A running
sweep shows only in ``refund_sorter_sweep_running`` and ``refund_sorter_running_sweep_*``,
so its partial ratios trip no alert; skipped runs never count; abandoned ones have their own
series. A night with no photos has no ratios: the series are left out rather than shown as 0.

A scrape that cannot reach the database or the broker still answers, with
``refund_sorter_database_up`` or ``refund_sorter_broker_up`` at 0 and whatever else it could
read; what went wrong is logged once per scrape, passwords masked.
"""

import json
import logging
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

from kombu.exceptions import OperationalError
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError as DatabaseUnreachable
from sqlalchemy.orm import Session

from models import ItemStatus, Prediction, SweepRun, SweepStatus
from refund_sorter import crud, drift
from refund_sorter.celery_app import SorterCelery, queue_depth
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.messages import CLASSIFY_QUEUE, COUNTER_QUEUE, SWEEP_QUEUE
from refund_sorter.redact import redact
from review import accuracy, nights, queue

log = logging.getLogger(__name__)

PREFIX = "refund_sorter_"
QUEUES = (CLASSIFY_QUEUE, COUNTER_QUEUE, SWEEP_QUEUE)
# A sweep row's counter for each photo status the series show.
STATUS_COUNTERS = {
    ItemStatus.OK: "succeeded",
    ItemStatus.FAILED: "failed",
    ItemStatus.QUEUED: "pending",
    nights.KNOWN: "known",  # already classified, a duplicate, or failed before and still there
    ItemStatus.DEFERRED: "deferred",
}
# A scrape waits this long at most for the broker (connecting, then each reply): Prometheus
# gives up on a scrape after 10 s by default, and then shows nothing at all.
BROKER_TIMEOUT = 5.0


def timestamp(value: datetime) -> float:
    return crud.as_utc(value).timestamp()


class Families:
    """The gauge families of one scrape, in the order they are read."""

    def __init__(self) -> None:
        self.items: list[Metric] = []

    def gauge(self, name: str, doc: str, value: float) -> None:
        self.items.append(GaugeMetricFamily(PREFIX + name, doc, value=value))

    def labelled(self, name: str, doc: str, labels: list[str], values: dict[tuple, float]):
        if not values:
            return  # nothing to show: no family either
        family = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
        for key, value in values.items():
            family.add_metric(list(key), value)
        self.items.append(family)

    def photos(self, name: str, doc: str, run: SweepRun) -> None:
        self.labelled(
            name,
            doc,
            ["status"],
            {(status,): getattr(run, counter) for status, counter in STATUS_COUNTERS.items()},
        )


class SorterCollector:
    """Reads every series at scrape time (``collect``); holds only the settings and a Celery
    app built from them (configuration, no figures)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = SorterCelery(settings, set_as_current=False)

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: registering the collector must not scrape it.
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        out, problems = Families(), []
        database_up = self._read_database(out, problems)
        broker_up = self._read_broker(out, problems)
        out.gauge(
            "database_up",
            "1 when every database read of this scrape succeeded, 0 when the database could "
            "not be reached or read (the series it could not read are then missing).",
            database_up,
        )
        out.gauge(
            "broker_up",
            "1 when the broker (Redis) answered this scrape, 0 when it could not be reached "
            "(the queue series are then missing).",
            broker_up,
        )
        if problems:
            log.warning("metrics scrape: %s", "; ".join(problems))
        out.gauge(
            "scrape_duration_seconds",
            "Seconds this scrape took to read the database, the broker and the model version.",
            time.monotonic() - started,
        )
        yield from out.items

    # ------------------------------------------------------------------------ the database

    def _read_database(self, out: Families, problems: list[str]) -> int:
        url = self.settings.database_url
        try:
            with session_factory(url)() as session:
                self._sweeps(session, out)
                self._review(session, out)
                self._accuracy(session, out)
                self._models(session, out)
        except DatabaseUnreachable as exc:
            problems.append(redact(f"cannot reach the database {url}: {one_line(exc.orig)}"))
            return 0
        except DBAPIError as exc:  # reached, but not the tables expected (not migrated?)
            problems.append(redact(f"cannot read the database {url}: {one_line(exc.orig)}"))
            return 0
        return 1

    def _sweeps(self, session: Session, out: Families) -> None:
        running = crud.running_sweep(session)
        out.gauge(
            "sweep_running",
            "1 while a sweep runs (its images still being classified).",
            int(bool(running)),
        )
        if running is not None:
            out.gauge(
                "running_sweep_started_timestamp_seconds",
                "When the running sweep started (Unix time).",
                timestamp(running.started_at),
            )
            out.gauge(
                "running_sweep_updated_timestamp_seconds",
                "When the running sweep last made progress (Unix time).",
                timestamp(running.updated_at),
            )
            out.photos(
                "running_sweep_photos",
                "Photos of the running sweep so far, by status (queued: still to classify).",
                running,
            )

        abandoned, last_abandoned = session.execute(
            select(func.count(), func.max(SweepRun.started_at)).where(
                SweepRun.status == SweepStatus.ABANDONED
            )
        ).one()
        out.gauge(
            "abandoned_sweeps",
            "Sweeps ever abandoned: they made no progress for REFUND_SORTER_SWEEP_STALE_HOURS; "
            "their queued photos went to a later sweep.",
            abandoned,
        )
        if last_abandoned is not None:
            out.gauge(
                "last_abandoned_sweep_started_timestamp_seconds",
                "When the newest abandoned sweep started (Unix time).",
                timestamp(last_abandoned),
            )

        out.labelled(
            "drift_threshold",
            "REFUND_SORTER_DRIFT_PSI_THRESHOLD: a drift score above it, with a chi-square "
            "p-value below REFUND_SORTER_DRIFT_P_VALUE, is drift of the category mix.",
            ["level"],
            {(level,): self.settings.drift_psi_threshold for level in drift.LEVELS},
        )
        out.labelled(
            "drift_confidence_ks_threshold",
            "REFUND_SORTER_DRIFT_KS_THRESHOLD: a confidence KS statistic above it, with a KS "
            "p-value below REFUND_SORTER_DRIFT_P_VALUE, is drift of the confidences.",
            ["level"],
            {(level,): self.settings.drift_ks_threshold for level in drift.LEVELS},
        )
        out.labelled(
            "drift_p_value_threshold",
            "REFUND_SORTER_DRIFT_P_VALUE: the p-value (chi-square for the mix, KS for the "
            "confidences) a shift must fall below to count as drift.",
            ["level"],
            {(level,): self.settings.drift_p_value for level in drift.LEVELS},
        )
        out.labelled(
            "audit_accuracy_target",
            "REFUND_SORTER_AUDIT_ACCURACY_TARGET_MAIN and _SUB: RefundSorterAuditAccuracyLow "
            "fires when the upper end of the audit accuracy's 95% interval lies below it.",
            ["level"],
            {
                ("main",): self.settings.audit_accuracy_target_main,
                ("sub",): self.settings.audit_accuracy_target_sub,
            },
        )
        out.gauge(
            "failed_ratio_warning",
            "REFUND_SORTER_NIGHTS_FAILED_WARNING: a last sweep's failed share above it is "
            "marked on the review desk's Nights page and raises RefundSorterFailedShareHigh.",
            self.settings.nights_failed_warning,
        )

        last = session.scalar(
            select(SweepRun)
            .where(SweepRun.status == SweepStatus.FINISHED)
            .order_by(SweepRun.started_at.desc(), SweepRun.id.desc())
            .limit(1)
        )
        if last is None:
            return
        self._last_sweep(session, out, last)

    def _last_sweep(self, session: Session, out: Families, last: SweepRun) -> None:
        duration = (crud.as_utc(last.finished_at) - crud.as_utc(last.started_at)).total_seconds()
        out.gauge("last_sweep_id", "Id of the last sweep (the newest finished one).", last.id)
        out.gauge(
            "last_sweep_started_timestamp_seconds",
            "When the last sweep (the newest finished one) started (Unix time).",
            timestamp(last.started_at),
        )
        out.gauge(
            "last_sweep_finished_timestamp_seconds",
            "When the last sweep finished (Unix time).",
            timestamp(last.finished_at),
        )
        out.gauge(
            "last_sweep_duration_seconds", "From start to finish of the last sweep.", duration
        )
        out.photos(
            "last_sweep_photos",
            "Photos of the last sweep by status: ok (classified), failed, queued, known "
            "(known already: classified before, a duplicate, or failed before and still "
            "there), deferred (still being written, left for a later sweep).",
            last,
        )

        is_ok = Prediction.status == ItemStatus.OK
        ok, flagged, failed = session.execute(
            select(
                func.count().filter(is_ok),
                func.count().filter(is_ok, Prediction.needs_review),
                func.count().filter(Prediction.status == ItemStatus.FAILED),
            ).where(
                Prediction.sweep_run_id == last.id,
                Prediction.status.in_((ItemStatus.OK, ItemStatus.FAILED)),
            )
        ).one()
        if ok:
            out.gauge(
                "last_sweep_flagged_ratio",
                "Share of the last sweep's classified photos flagged for review (0 to 1).",
                flagged / ok,
            )
        if (failed_share := nights.failed_share(ok, failed)) is not None:
            out.gauge(
                "last_sweep_failed_ratio",
                "Share of the last sweep's photos that failed, of those classified or failed "
                "(0 to 1).",
                failed_share,
            )
        settled = last.succeeded + last.failed
        if settled and duration > 0:
            out.gauge(
                "last_sweep_images_per_second",
                "Photos classified or failed per second of the last sweep, start to finish.",
                settled / duration,
            )

        categories = session.execute(
            select(Prediction.main_category, Prediction.sub_category, func.count())
            .where(Prediction.sweep_run_id == last.id, Prediction.status == ItemStatus.OK)
            .group_by(Prediction.main_category, Prediction.sub_category)
        )
        out.labelled(
            "last_sweep_category_photos",
            "Classified photos of the last sweep by predicted main and sub category.",
            ["main", "sub"],
            {(main, sub): n for main, sub, n in categories},
        )

        self._baseline(session, out, last)
        self._drift(session, out, last)

    def _baseline(self, session: Session, out: Families, last: SweepRun) -> None:
        nights = drift.baseline_nights(session, last.id, last=self.settings.drift_baseline_nights)
        out.gauge(
            "baseline_nights",
            "Nights in the last sweep's baseline: the finished sweeps with classified photos "
            "just before it, up to REFUND_SORTER_DRIFT_BASELINE_NIGHTS.",
            len(nights),
        )
        if not nights:
            return
        per_night = session.execute(
            select(func.count(), func.count().filter(Prediction.needs_review))
            .where(Prediction.sweep_run_id.in_(nights), Prediction.status == ItemStatus.OK)
            .group_by(Prediction.sweep_run_id)
        )
        out.gauge(
            "baseline_flagged_ratio",
            "Mean over the baseline nights of each night's flagged share (0 to 1).",
            statistics.fmean(flagged / n for n, flagged in per_night),
        )

    def _drift(self, session: Session, out: Families, last: SweepRun) -> None:
        found = drift.night_drift(session, last.id, settings=self.settings)
        if found is None:  # no classified photo that night, or no baseline night
            return
        levels = found.levels.values()
        out.labelled(
            "drift_score",
            "Population stability index of the last sweep's predicted category mix against "
            "its baseline nights (0: the same mix; 0.1 moderate, 0.25 large).",
            ["level"],
            {(d.level,): d.psi for d in levels},
        )
        out.labelled(
            "drift_p_value",
            "p-value of the last sweep against its baseline nights: test=chi2, the chi-square "
            "test of the category mix; test=ks, the two-sample Kolmogorov-Smirnov test of the "
            "confidences.",
            ["level", "test"],
            {
                **{(d.level, "chi2"): d.chi2_p_value for d in levels},
                **{(d.level, "ks"): d.confidence_ks_p_value for d in levels},
            },
        )
        out.labelled(
            "drift_confidence_ks",
            "Two-sample Kolmogorov-Smirnov statistic of the last sweep's confidences against "
            "its baseline nights' (0 to 1: the largest gap between their distributions).",
            ["level"],
            {(d.level,): d.confidence_ks for d in levels},
        )

    def _review(self, session: Session, out: Families) -> None:
        out.gauge(
            "review_backlog_photos",
            "Photos waiting for a person on the review desk (flagged for review or drawn for "
            "the blind audit) that nobody has decided.",
            queue.count_left(session, queue.Selection()),
        )
        oldest = queue.oldest_undecided(session)
        if oldest is not None:
            age = datetime.now(UTC) - crud.as_utc(oldest.classified_at)
            out.gauge(
                "review_oldest_age_seconds",
                "Age of the oldest photo waiting on the review desk, since it was classified.",
                max(0.0, age.total_seconds()),
            )

    def _accuracy(self, session: Session, out: Families) -> None:
        nights = accuracy.night_counts(session)
        window = accuracy.figures([(total, by_main) for _, _, total, by_main in nights])
        estimates = {"main": window.unflagged_main, "sub": window.unflagged_sub}
        known = {level: e for level, e in estimates.items() if e.value is not None}
        where = (
            f"over the last {accuracy.WINDOW} nights with classified photos, from the blind "
            "audit: a random sample of the photos not flagged for review, decided by a person"
        )
        out.labelled(
            "audit_photos",
            f"Audited photos decided by a person {where}.",
            ["level"],
            {(level,): e.n for level, e in estimates.items()},
        )
        for name, field, what in (
            ("audit_accuracy", "value", "Accuracy of the photos nobody reviews"),
            ("audit_accuracy_lower", "low", "Lower bound of the 95% interval of that accuracy"),
            ("audit_accuracy_upper", "high", "Upper bound of the 95% interval of that accuracy"),
        ):
            out.labelled(
                name,
                f"{what} (0 to 1), {where}.",
                ["level"],
                {(level,): getattr(e, field) for level, e in known.items()},
            )

    # -------------------------------------------------------------------------- the broker

    def _read_broker(self, out: Families, problems: list[str]) -> int:
        options = {"socket_connect_timeout": BROKER_TIMEOUT, "socket_timeout": BROKER_TIMEOUT}
        with self.app.connection_for_read(transport_options=options) as conn:
            try:
                conn.ensure_connection(max_retries=0)  # one try: the next scrape is the retry
                with conn.channel() as channel:
                    ready = {queue: queue_depth(channel, queue) for queue in QUEUES}
                    unacked = unacked_per_queue(channel)
            except (OperationalError, *conn.connection_errors) as exc:
                url = self.app.conf.broker_url
                problems.append(redact(f"cannot reach the broker at {url}: {one_line(exc)}"))
                return 0
        out.labelled(
            "queue_messages",
            "Messages in the broker per queue: state=ready, waiting in the queue; "
            "state=unacked, delivered to a worker and not yet acknowledged (held for a batch, "
            "being classified, or a retry waiting for its countdown).",
            ["queue", "state"],
            {
                **{(queue, "ready"): n for queue, n in ready.items()},
                **{(queue, "unacked"): unacked[queue] for queue in QUEUES},
            },
        )
        return 1

    def _models(self, session: Session, out: Families) -> None:
        """The registry's serving model and candidate (refund-sorter model list): read as
        they are, never made to serve from here."""
        serving, candidate = crud.serving_model(session), crud.candidate_model(session)
        out.labelled(
            "model_info",
            "The model version the registry serves (the first 12 hex digits of the SHA-256 of "
            "its file); always 1, absent while no model serves.",
            ["version"],
            {(serving.version,): 1} if serving else {},
        )
        out.labelled(
            "candidate_model_info",
            "The candidate model version registered to run in the shadow of the serving one; "
            "always 1, absent without a candidate.",
            ["version"],
            {(candidate.version,): 1} if candidate else {},
        )


def unacked_per_queue(channel) -> Counter:
    """Messages delivered and not yet acknowledged, per queue. Kombu's Redis transport keeps
    each in the hash ``unacked`` as JSON [message, exchange, routing key] until its ack (or
    until the visibility timeout hands it out again); Celery routes every task of a queue
    with the queue's name as its routing key."""
    counts: Counter = Counter()
    for raw in channel.client.hvals(channel.unacked_key):
        _message, _exchange, routing_key = json.loads(raw)
        counts[routing_key] += 1
    return counts


def one_line(error: object) -> str:
    """An error's message on one line (libpq's span several)."""
    return " ".join(str(error).split())
