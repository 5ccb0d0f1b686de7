"""The workers' tasks: classify messages of up to 32 images each, buffered into batches;
and the returns counter's messages of one image each, each flushed as it arrives.

The task translates a batch of messages (enough for REFUND_SORTER_BATCH_SIZE images) into
one ``process_batch`` call per model version the messages carry, each with that model,
loaded from the model store the first time this process needs it (the serving one as the
process starts, ``worker.lifecycle``); and reports each task to Flower (``worker.events``).
A message is always classified by the model it was enqueued for, whatever serves now: a
promotion needs no restart, and no photo waits for a model nobody has loaded.

A batch that fails as a whole (database or disk trouble) is published again with a growing
countdown (REFUND_SORTER_RETRY_DELAY, doubled each time) up to REFUND_SORTER_RETRY_LIMIT
retries; then its rows are marked failed and the files stay in ``incoming/`` for the next
sweep (a counter photo's in the counter's folder, for the client to send again).

Both tasks run the same code on the same per-process models and state; the counter's
(``classify_counter``, on the ``counter`` queue) differs only in flushing every message at
once, so that a counter photo never waits for a batch to fill (REFUND_SORTER_BATCH_MAX_WAIT),
and in publishing its retries on its own queue.
"""

import logging
import time
from collections import Counter, OrderedDict
from datetime import timedelta
from itertools import groupby
from operator import attrgetter
from typing import ClassVar

from celery_batches import Batches

from models import utcnow
from refund_sorter import crud
from refund_sorter.celery_app import announce, app, publish
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.errors import UserError
from refund_sorter.filing import file_committed
from refund_sorter.messages import (
    CLASSIFY_QUEUE,
    CLASSIFY_TASK,
    COUNTER_QUEUE,
    COUNTER_TASK,
    WorkItem,
    by_model,
    read_task,
)
from registry.registry import NotInStore, model_path_disagreement, serving_version
from worker.events import report_to_flower
from worker.lifecycle import Node, stop_taking_images
from worker.pipeline import (
    BatchOutcome,
    ModelUnavailable,
    NotStored,
    ProcessState,
    load_classifier,
    process_batch,
    torch_threads,
)

log = logging.getLogger(__name__)

# Models one process keeps loaded: the serving one and one other, so that the last photos
# enqueued for the model that served before a promotion and the first ones for the new model
# are both classified without loading either again. A third model to load unloads the one
# used least recently. Each costs its weights in memory (ResNet18: about 45 MB in fp32).
MODELS_PER_PROCESS = 2


class ClassifierTask(Batches):
    """Buffers classify tasks into batches; holds what each process keeps: the worker's node
    record (``worker.lifecycle``), the models, each loaded once per process, and the
    process's state between batches (``worker.pipeline.ProcessState``)."""

    node: Node = Node()  # replaced by the worker's own as it starts
    # Where this task's items go back to (a model missing here, a retry).
    home_queue: ClassVar[str] = CLASSIFY_QUEUE
    # By version, the least recently used first; one per process (a class attribute).
    _loaded: ClassVar[OrderedDict[str, object]] = OrderedDict()
    _state: ClassVar[ProcessState | None] = None

    @property
    def process_state(self) -> ProcessState:
        """This process's state, made the first time the process needs it (after the fork)."""
        if ClassifierTask._state is None:
            ClassifierTask._state = ProcessState.sharing_cores(self.node.processes)
        return ClassifierTask._state

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

    def classifier_for(self, version: str):
        """The model ``version``, loaded from the model store if this process does not hold
        it yet. NotInStore when the registry has no file for it; ModelUnavailable when its
        file cannot be loaded; the database's error when the registry cannot be read."""
        loaded = self._loaded
        if version in loaded:
            loaded.move_to_end(version)
            return loaded[version]
        settings = self.app.settings
        clf = load_classifier(settings, version, self.node.processes)
        warm_up(clf)
        loaded[version] = clf
        while len(loaded) > MODELS_PER_PROCESS:
            dropped, _ = loaded.popitem(last=False)
            log.info("unloaded model %s: this process keeps %d", dropped, MODELS_PER_PROCESS)
        log.info(
            "loaded model %s on %s in %s %s with %d threads, its own review threshold %s",
            clf.version,
            clf.device,
            clf.runtime,
            clf.precision,
            torch_threads(settings, self.node.processes),
            clf.review_threshold,
        )
        return clf

    def load_serving_model(self) -> None:
        """Load the model that serves now, before the first batch. ModelUnavailable when it
        cannot be (none serves, or its file cannot be loaded); a registry that cannot be read
        now is only logged: the first batch loads the model it needs."""
        settings = self.app.settings
        try:
            version = serving_version(settings)
        except UserError as exc:
            raise ModelUnavailable(str(exc)) from exc
        except Exception as exc:
            log.warning("cannot read the model registry (%s); the first batch loads its model", exc)
            return
        if note := model_path_disagreement(settings, version):
            log.warning(note)
        try:
            self.classifier_for(version)
        except NotInStore as exc:
            raise ModelUnavailable(str(exc)) from exc


def warm_up(clf) -> None:
    """One forward pass over a blank image as a model loads, so that the first batch does not
    pay for what the runtime does on its first call (allocating, choosing kernels; on a GPU,
    starting its libraries). A model that fails it is kept all the same: the batches say
    what is wrong with it, as they would have without a warm-up."""
    import torch

    size = clf.checkpoint.image_size
    started = time.perf_counter()
    try:
        clf.predict_tensors(torch.zeros((1, 3, size, size), dtype=torch.uint8))
    except Exception as exc:
        log.warning("warm-up of model %s failed: %s", clf.version, exc)
        return
    log.debug("warmed model %s up in %.3f s", clf.version, time.perf_counter() - started)


class CounterClassifierTask(ClassifierTask):
    """The returns counter's photos: one image per message, each flushed as it arrives. A
    client waits for its answer, and a batch of one costs a forward pass of one, which a CPU
    runs in milliseconds; the models and the process's state are the night's (class
    attributes of ``ClassifierTask``), so a worker that takes both queues loads each model
    once."""

    home_queue: ClassVar[str] = COUNTER_QUEUE

    @property
    def flush_every(self) -> int:
        return 1


@app.task(base=ClassifierTask, name=CLASSIFY_TASK, bind=True)
def classify(self, requests) -> None:
    classify_requests(self, requests)


@app.task(base=CounterClassifierTask, name=COUNTER_TASK, bind=True)
def classify_counter(self, requests) -> None:
    classify_requests(self, requests)


def classify_requests(task: ClassifierTask, requests) -> None:
    """Classify a batch of messages (``requests``) of either task: each model version's
    items through ``process_batch``, what cannot be done now put back on the task's queue
    or retried, and the batch reported to Flower."""
    tasks = [(request, *read_task(request.args)) for request in requests]
    for request, _, reasons in tasks:
        for reason in reasons:
            log.warning("refused in task %s: %s", request.id, reason)
    # A task the stall check published again may meet the one it stands in for.
    items = list(dict.fromkeys(it for _, carried, _ in tasks for it in carried))
    refused = sum(len(reasons) for _, _, reasons in tasks)
    settings = task.app.settings
    started = time.monotonic()
    groups = by_model(items)
    outcome = BatchOutcome()
    # Whether the batch is done with (not put back, not retried), to be logged and reported;
    # a batch of refused entries only is reported as such.
    classified = not items
    for version, group in groups.items():
        try:
            clf = task.classifier_for(version)
            statuses = process_batch(group, clf, settings, task.process_state).statuses
        except NotInStore as exc:
            # No worker can classify for it. Its rows stay queued and its files untouched: the
            # stall check releases their sweep, and the next sweep takes them over.
            log.error("left %d images for model %s as they are: %s", len(group), version, exc)
            outcome.statuses += [(it, NotStored.IGNORED) for it in group]
            classified = True
        except ModelUnavailable as exc:
            # Not the images' fault: put them back as they came, for a worker that has a model.
            stop_taking_images(str(exc))
            publish(group, queue=task.home_queue)
            log.warning("put %d images back on the queue: no model here", len(group))
        except Exception as exc:
            # The registry could not be read, or the batch failed. celery-batches acknowledges
            # a batch even when it raised, so this is the only chance to keep the work.
            retry_or_give_up(group, exc, settings, task.home_queue)
        else:
            outcome.statuses += statuses
            classified = True
    # Whatever became of them, the requests of the API waiting for these rows look again.
    announce(items)
    if not classified:
        return
    log.info(
        "batch of %d images: %d ok, %d failed, %d ignored, %d refused (model %s)",
        len(items) + refused,
        outcome.ok,
        outcome.failed,
        outcome.ignored,
        outcome.refused + refused,
        ", ".join(groups),
    )
    report_to_flower(task.name, tasks, outcome, time.monotonic() - started)


def retry_or_give_up(
    items: list[WorkItem], exc: Exception, settings: Settings, queue: str = CLASSIFY_QUEUE
) -> None:
    """Publish a failed batch's items again on ``queue``, each after
    ``retry_countdown(attempt)``, or mark those whose retries are used up ``failed`` (files
    left where they are)."""
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
            publish([it.next_attempt() for it in group], countdown=countdown, queue=queue)
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
            until = utcnow() + timedelta(seconds=countdown)
            crud.postpone_stall_check(session, items, until)
            crud.postpone_counter_check(session, items, until)
    except Exception as exc:  # the database may be what failed: the retry is on its way anyway
        log.warning("could not postpone the stall check: %s", exc)


def _give_up(items: list[WorkItem], error: str, settings: Settings) -> None:
    sessions = session_factory(settings.database_url)
    try:
        with sessions.begin() as session:
            stored = crud.record_failures(session, items, error)
        # Their files stay where they are: nothing to move, and the nights they complete end.
        file_committed(sessions, [], Counter(stored.values()), settings.export_dir)
    except Exception as exc:
        # The database is down too: drop the messages. Rows still queued are published again
        # by the stall check once the database is back and the sweep looks stalled; rows
        # marked failed and not yet counted as filed are counted when it settles the sweep.
        log.error("could not mark %d images failed (%s)", len(items), exc)
