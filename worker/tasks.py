"""The workers' task: per-image classify messages, buffered into batches.

The task translates a batch of messages into one ``process_batch`` call. PyTorch is
imported only when a process classifies its first batch, so a worker that only sweeps
never loads it.
"""

import logging
import time

from celery_batches import Batches

from classifier.version import model_version
from refund_sorter.celery_app import app, publish
from refund_sorter.messages import CLASSIFY_TASK, WorkItem
from worker.pipeline import IGNORED, REFUSED, load_classifier, process_batch

log = logging.getLogger(__name__)
RETRY_DELAY = 60  # seconds before a failed batch is tried again


class ClassifierTask(Batches):
    """Buffers per-image tasks into batches; holds the model, loaded once per process."""

    _classifier = None

    @property
    def flush_every(self) -> int:
        return self.app.settings.batch_size

    @property
    def flush_interval(self) -> float:
        return self.app.settings.batch_max_wait

    @property
    def classifier(self):
        if self._classifier is None:
            type(self)._classifier = load_classifier(self.app.settings)
            log.info("loaded model %s on %s", self._classifier.version, self._classifier.device)
        return self._classifier

    def classifier_for(self, items: list[WorkItem]):
        """The loaded model, reloaded first if the model file was replaced since it was
        loaded and these tasks were enqueued for the new one."""
        clf = self.classifier
        wanted = {it.model_version for it in items} - {clf.version}
        if wanted and model_version(self.app.settings.model_path) in wanted:
            log.info("model file changed (now %s): reloading", ", ".join(sorted(wanted)))
            type(self)._classifier = None
            clf = self.classifier
        return clf


@app.task(base=ClassifierTask, name=CLASSIFY_TASK, bind=True)
def classify(self, requests) -> None:
    items = []
    for request in requests:
        try:
            items.append(WorkItem.from_args(request.args))
        except ValueError as exc:
            log.warning("refused task %s: %s", request.id, exc)
    started = time.monotonic()
    try:
        outcome = process_batch(items, self.classifier_for(items), self.app.settings)
    except Exception:
        # celery-batches acknowledges a batch even when it raised, so put the work back on
        # the queue (with a pause, for a database or disk to come back) instead of losing it.
        log.exception("batch of %d failed; re-queued to run in %d s", len(items), RETRY_DELAY)
        publish(items, countdown=RETRY_DELAY)
        return
    log.info(
        "batch of %d: %d ok, %d failed, %d ignored, %d refused",
        len(requests),
        outcome.ok,
        outcome.failed,
        outcome.ignored,
        outcome.refused + len(requests) - len(items),
    )
    report_to_flower(self.name, requests, outcome, time.monotonic() - started)


def report_to_flower(name: str, requests, outcome, runtime: float) -> None:
    """Send each image's task events: batched tasks skip Celery's own per-task events, and
    without them Flower would list the workers but none of their tasks."""
    if not app.conf.worker_send_task_events or not requests:
        return
    status_of = {item: status for item, status in outcome.statuses}
    with app.events.default_dispatcher(hostname=requests[0].hostname) as events:
        for request in requests:
            try:
                status = status_of.get(WorkItem.from_args(request.args), IGNORED)
            except ValueError:
                status = REFUSED
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
            events.send(
                "task-succeeded",
                result=repr(status),
                runtime=runtime,
                **fields,
            )
