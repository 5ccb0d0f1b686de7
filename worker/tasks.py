"""The workers' task: classify messages of up to 32 images each, buffered into batches.

The task translates a batch of messages (enough for REFUND_SORTER_BATCH_SIZE images) into
one ``process_batch`` call. Each pool process of a worker that takes images loads the model
when it starts, so the first batch does not wait for it and a model that cannot be loaded is
known before any image is taken: the worker then logs why and stops consuming the classify
queue. A worker that only sweeps (``-Q sweep``) never loads PyTorch.

A batch that fails as a whole (database or disk trouble) is published again with a growing
countdown (REFUND_SORTER_RETRY_DELAY, doubled each time) up to REFUND_SORTER_RETRY_LIMIT
retries; then its rows are marked failed and the files stay in ``incoming/`` for the next
sweep.
"""

import logging
import threading
import time
from collections import Counter
from datetime import timedelta
from itertools import groupby
from operator import attrgetter

from celery import signals
from celery_batches import Batches

from classifier.version import model_version
from models import utcnow
from refund_sorter import crud
from refund_sorter.celery_app import app, publish
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.export import export_sweeps
from refund_sorter.messages import CLASSIFY_QUEUE, CLASSIFY_TASK, WorkItem, read_task
from worker.pipeline import IGNORED, REFUSED, load_classifier, process_batch, torch_threads

log = logging.getLogger(__name__)


class ModelUnavailable(Exception):
    """The model file cannot be loaded: this process can classify nothing."""


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
                processes = _worker.get("processes", 1)
                type(self)._classifier = load_classifier(self.app.settings, processes)
            except Exception as exc:
                raise ModelUnavailable(
                    f"cannot load the model {self.app.settings.model_path}: {exc}"
                ) from exc
            log.info(
                "loaded model %s on %s in %s with %d PyTorch threads, review threshold %s",
                self._classifier.version,
                self._classifier.device,
                self._classifier.precision,
                torch_threads(self.app.settings, _worker.get("processes", 1)),
                self._classifier.review_threshold(self.app.settings.review_threshold),
            )
        return self._classifier

    def classifier_for(self, items: list[WorkItem]):
        """The loaded model, reloaded first if the model file was replaced since it was
        loaded and these tasks were enqueued for the new one."""
        clf = self.classifier
        wanted = {it.model_version for it in items} - {clf.version}
        if wanted and _version_on_disk(self.app.settings) in wanted:
            log.info("model file changed (now %s): reloading", ", ".join(sorted(wanted)))
            type(self)._classifier = None
            clf = self.classifier
        return clf


def _version_on_disk(settings: Settings) -> str | None:
    try:
        return model_version(settings.model_path)
    except OSError:  # removed: keep the model in hand; tasks for another one are left queued
        return None


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


# ------------------------------------------------------------------- model at process start

# Which node this worker is and whether it takes images; recorded in the main process before
# the pool starts, so pool processes inherit it.
_worker: dict = {}
_stopping = threading.Event()


@signals.worker_init.connect
def _remember_worker(sender, **_) -> None:
    _worker["hostname"] = sender.hostname
    # How many batches run at once, to share the cores out: one per pool process (prefork)
    # or thread (threads pool); the solo pool runs one whatever --concurrency says.
    solo = "solo" in str(sender.pool_cls).lower()
    _worker["processes"] = 1 if solo else sender.concurrency
    _worker["pool_processes"] = "prefork" in str(sender.pool_cls).lower()
    _worker["takes_images"] = CLASSIFY_QUEUE in sender.app.amqp.queues.consume_from


@signals.worker_process_init.connect
def load_model_at_start(**_) -> None:
    """Load the model as the pool process starts (once per process, as before, but now before
    its first batch); if it cannot be loaded, stop taking images."""
    if not _worker.get("takes_images"):
        return
    try:
        classify.classifier  # noqa: B018 (loads it)
    except ModelUnavailable as exc:
        stop_taking_images(str(exc))


@signals.worker_ready.connect
def load_model_in_the_main_process(**_) -> None:
    """The solo and threads pools classify in the main process (a GPU worker runs solo, as
    CUDA does not survive fork): it loads the model before the first batch too."""
    if not _worker.get("pool_processes"):
        load_model_at_start()


def stop_taking_images(reason: str) -> None:
    """Log why, and have this worker's main process stop consuming the classify queue: the
    images stay in the queue for workers that can classify them. Asked over the broker (the
    pool process cannot reach its parent's consumer otherwise), from a thread that asks until
    the main process answers, since it listens only once it is up."""
    if _stopping.is_set():
        return
    _stopping.set()
    log.error("%s; this worker takes no images until it is restarted", reason)
    threading.Thread(
        target=_cancel_classify_consumer, name="stop-taking-images", daemon=True
    ).start()


def _cancel_classify_consumer() -> None:
    node = _worker.get("hostname")
    for _ in range(300):
        try:
            if app.control.cancel_consumer(
                CLASSIFY_QUEUE, destination=[node], reply=True, timeout=1
            ):
                log.warning("stopped consuming the %s queue", CLASSIFY_QUEUE)
                return
        except Exception as exc:  # the broker is away: ask again
            log.warning("asking to stop consuming the %s queue: %s", CLASSIFY_QUEUE, exc)
            time.sleep(1)
    log.error("could not stop consuming the %s queue: %s did not answer", CLASSIFY_QUEUE, node)


def report_to_flower(name: str, tasks, outcome, runtime: float) -> None:
    """Send each task's events: batched tasks skip Celery's own per-task events, and without
    them Flower would list the workers but none of their tasks. A batch's events go out as
    one message (a list, which Celery's event receivers accept). ``tasks``: each request
    with the items it carried and the reasons its other entries were refused. A task's
    result counts its images by outcome: ``{'ok': 31, 'failed': 1}``."""
    if not app.conf.worker_send_task_events or not tasks:
        return
    status_of = {item: status for item, status in outcome.statuses}
    with app.events.default_dispatcher(hostname=tasks[0][0].hostname) as events:
        events.buffer_group = frozenset({"task"})
        events.buffer_limit = 3 * len(tasks) + 1  # flushed below, once
        for request, items, reasons in tasks:
            counts = Counter(status_of.get(it, IGNORED) for it in items)
            counts.update({REFUSED: len(reasons)} if reasons else {})
            fields = {"uuid": request.id}
            events.send(
                "task-received",
                name=name,
                args=repr(request.args),
                kwargs="{}",
                retries=0,
                root_id=request.id,
                **fields,
            )
            events.send("task-started", **fields)
            events.send("task-succeeded", result=repr(dict(counts)), runtime=runtime, **fields)
        events.flush()
