"""The workers' task: classify messages of up to 32 images each, buffered into batches.

The task translates a batch of messages (enough for REFUND_SORTER_BATCH_SIZE images) into
one ``process_batch`` call, with the model its process loaded when it started
(``worker.lifecycle``), and reports each task to Flower (``worker.events``).

A batch that fails as a whole (database or disk trouble) is published again with a growing
countdown (REFUND_SORTER_RETRY_DELAY, doubled each time) up to REFUND_SORTER_RETRY_LIMIT
retries; then its rows are marked failed and the files stay in ``incoming/`` for the next
sweep.
"""

import logging
import time
from datetime import timedelta
from itertools import groupby
from operator import attrgetter

from celery_batches import Batches

from classifier.version import is_for_model, is_for_served_model
from models import utcnow
from refund_sorter import crud
from refund_sorter.celery_app import app, publish
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.export import export_sweeps
from refund_sorter.messages import CLASSIFY_TASK, WorkItem, read_task
from worker.events import report_to_flower
from worker.lifecycle import ModelUnavailable, classifying_processes, stop_taking_images
from worker.pipeline import load_classifier, process_batch, torch_threads

log = logging.getLogger(__name__)


class ClassifierTask(Batches):
    """Buffers classify tasks into batches; holds the model, loaded once per process."""

    _classifier = None

    @property
    def flush_every(self) -> int:
        return self.app.settings.tasks_per_batch

    @property
    def flush_interval(self) -> float:
        return self.app.settings.batch_max_wait

    def Strategy(self, task, app, consumer):
        # celery-batches 0.11 arms its flush timer once (self._tref) on the consumer's timer.
        # After a broker reconnect Celery clears that timer and calls Strategy() again for the
        # rebuilt consumer, but _tref is still set, so the timer is never armed again: a partial
        # batch, and every retry waiting for its countdown, stays unacked in the worker for
        # good. Upstream issue 107, fixed by pull request 108, not in 0.11: drop this override
        # once a release has the fix.
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        handler = super().Strategy(task, app, consumer)
        if not (self._buffer.empty() and self._pending.empty()):
            # Messages taken before the reconnect wait in the buffers: flush them now rather
            # than when a new message happens to arrive (after a broker restarted empty, none
            # may ever come).
            self._tref = consumer.timer.call_repeatedly(self.flush_interval, self._do_flush)
        return handler

    @property
    def classifier(self):
        if self._classifier is None:
            try:
                processes = classifying_processes()
                type(self)._classifier = load_classifier(self.app.settings, processes)
            except Exception as exc:
                raise ModelUnavailable(
                    f"cannot load the model {self.app.settings.model_path}: {exc}"
                ) from exc
            log.info(
                "loaded model %s on %s in %s with %d PyTorch threads, its own review threshold %s",
                self._classifier.version,
                self._classifier.device,
                self._classifier.precision,
                torch_threads(self.app.settings, classifying_processes()),
                self._classifier.review_threshold,
            )
        return self._classifier

    def classifier_for(self, items: list[WorkItem]):
        """The loaded model, reloaded first if the model file was replaced since it was
        loaded and these tasks were enqueued for the new one."""
        clf = self.classifier
        wanted = {
            it.model_version for it in items if not is_for_model(it.model_version, clf.version)
        }
        # A model file removed or unreadable serves no model: the one in hand stays, and
        # tasks for another model are left queued.
        if any(is_for_served_model(version, self.app.settings) for version in wanted):
            log.info("model file changed (now %s): reloading", ", ".join(sorted(wanted)))
            type(self)._classifier = None
            clf = self.classifier
        return clf


@app.task(base=ClassifierTask, name=CLASSIFY_TASK, bind=True)
def classify(self, requests) -> None:
    tasks = [(request, *read_task(request.args)) for request in requests]
    for request, _, reasons in tasks:
        for reason in reasons:
            log.warning("refused in task %s: %s", request.id, reason)
    # A task the stall check published again may meet the one it stands in for.
    items = list(dict.fromkeys(it for _, carried, _ in tasks for it in carried))
    refused = sum(len(reasons) for _, _, reasons in tasks)
    settings = self.app.settings
    started = time.monotonic()
    try:
        clf = self.classifier_for(items)
    except ModelUnavailable as exc:
        # Not the images' fault: put them back as they came, for a worker that has a model.
        stop_taking_images(str(exc))
        publish(items)
        log.warning("put %d images back on the queue: no model here", len(items))
        return
    try:
        outcome = process_batch(items, clf, settings)
    except Exception as exc:
        # celery-batches acknowledges a batch even when it raised, so this is the only
        # chance to keep the work.
        retry_or_give_up(items, exc, settings)
        return
    log.info(
        "batch of %d images: %d ok, %d failed, %d ignored, %d refused",
        len(items) + refused,
        outcome.ok,
        outcome.failed,
        outcome.ignored,
        outcome.refused + refused,
    )
    report_to_flower(self.name, tasks, outcome, time.monotonic() - started)


def retry_or_give_up(items: list[WorkItem], exc: Exception, settings: Settings) -> None:
    """Publish a failed batch's items again, each after ``retry_countdown(attempt)``, or mark
    those whose retries are used up ``failed`` (files left in ``incoming/``)."""
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
    by_attempt = attrgetter("attempt")
    for attempt, group in groupby(sorted(items, key=by_attempt), key=by_attempt):
        group = list(group)
        if attempt < settings.retry_limit:
            countdown = settings.retry_countdown(attempt)
            log.error(
                "batch of %d failed on attempt %d (%s); retry %d of %d in %.0f s",
                len(group),
                attempt + 1,
                reason,
                attempt + 1,
                settings.retry_limit,
                countdown,
                exc_info=exc,
            )
            publish([it.next_attempt() for it in group], countdown=countdown)
            _postpone_stall_check(group, countdown, settings)
        else:
            log.error(
                "batch of %d failed on attempt %d (%s); giving up: marked failed, files left "
                "in incoming/ for the next sweep",
                len(group),
                attempt + 1,
                reason,
                exc_info=exc,
            )
            _give_up(group, f"not classified after {attempt + 1} attempts: {reason}", settings)


def _postpone_stall_check(items: list[WorkItem], countdown: float, settings: Settings) -> None:
    try:
        with session_factory(settings.database_url).begin() as session:
            crud.postpone_stall_check(session, items, utcnow() + timedelta(seconds=countdown))
    except Exception as exc:  # the database may be what failed: the retry is on its way anyway
        log.warning("could not postpone the stall check: %s", exc)


def _give_up(items: list[WorkItem], error: str, settings: Settings) -> None:
    sessions = session_factory(settings.database_url)
    try:
        with sessions.begin() as session:
            _, finished = crud.record_failures(session, items, error)
    except Exception as exc:
        # The database is down too: drop the messages. The rows stay queued, and the stall
        # check publishes them again once the database is back and the sweep looks stalled.
        log.error("could not mark %d images failed (%s); they stay queued", len(items), exc)
        return
    export_sweeps(sessions, finished, settings.export_dir)
