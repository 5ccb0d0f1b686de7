"""A worker's process life cycle: what the main process records before its pool starts,
the serving model loaded as each process that classifies starts, and stopping taking images
when a model cannot be loaded.

Each pool process of a worker that takes images loads the serving model when it starts, so
the first batch does not wait for it and a model that cannot be loaded is known before any
image is taken: the worker then logs why and stops consuming the classify queue. A worker
that only sweeps (``-Q sweep``) never loads PyTorch. The models themselves are the classify
task's (``worker.tasks.ClassifierTask.classifier_for``), each loaded once per process.
"""

import logging
import threading
import time

from celery import signals

from refund_sorter.celery_app import app
from refund_sorter.messages import CLASSIFY_QUEUE, CLASSIFY_TASK
from worker.pipeline import ModelUnavailable, load_model
from worker.shadow import load_candidate_at_start

log = logging.getLogger(__name__)


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


def classifying_processes() -> int:
    """How many batches this worker runs at once, sharing the machine's cores."""
    return _worker.get("processes", 1)


@signals.worker_process_init.connect
def load_model_at_start(**_) -> None:
    """Load the serving model as the pool process starts (once per process, before its first
    batch); if it cannot be loaded, stop taking images."""
    if not _worker.get("takes_images"):
        return
    try:
        app.tasks[CLASSIFY_TASK].load_serving_model()
    except ModelUnavailable as exc:
        stop_taking_images(str(exc))
        return
    # The registered candidate too, if any, so that the first shadow run does not wait.
    load_candidate_at_start(app.settings, load_model)


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
