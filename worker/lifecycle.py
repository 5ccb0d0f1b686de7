"""A worker's process life cycle: what the main process records before its pool starts,
the serving model loaded as each process that classifies starts, and stopping taking images
when a model cannot be loaded.

Each pool process of a worker that takes images loads the serving model when it starts, so
the first batch does not wait for it and a model that cannot be loaded is known before any
image is taken: the worker then logs why and stops consuming the classify queue. A worker
that only sweeps (``-Q sweep``) never loads PyTorch. What a process keeps (the node record
below, the models, the per-process state) lives on the classify task's base class
(``worker.tasks.ClassifierTask``).
"""

import logging
import threading
import time
from dataclasses import dataclass, field

from celery import signals

from refund_sorter.celery_app import app
from refund_sorter.messages import CLASSIFY_QUEUE, CLASSIFY_TASK, COUNTER_QUEUE, COUNTER_TASK
from worker.pipeline import ModelUnavailable, load_model
from worker.shadow import load_candidate_at_start

# The queues of photos to classify, and the tasks that take them: the night's and the
# returns counter's. A worker that consumes either loads the models.
IMAGE_QUEUES = (CLASSIFY_QUEUE, COUNTER_QUEUE)
IMAGE_TASKS = (CLASSIFY_TASK, COUNTER_TASK)

log = logging.getLogger(__name__)


@dataclass
class Node:
    """Which node this worker is, how many batches it runs at once and whether it takes
    images; recorded in the main process before the pool starts, so pool processes inherit
    it; and whether this process has stopped taking images."""

    hostname: str | None = None
    # How many batches run at once, to share the cores out: one per pool process (prefork)
    # or thread (threads pool); the solo pool runs one whatever --concurrency says.
    processes: int = 1
    pool_processes: bool = False
    takes_images: bool = False
    stopping: threading.Event = field(default_factory=threading.Event)


def _node() -> Node:
    return app.tasks[CLASSIFY_TASK].node


@signals.worker_init.connect
def _remember_worker(sender, **_) -> None:
    node = Node(
        hostname=sender.hostname,
        processes=1 if "solo" in str(sender.pool_cls).lower() else sender.concurrency,
        pool_processes="prefork" in str(sender.pool_cls).lower(),
        takes_images=any(q in sender.app.amqp.queues.consume_from for q in IMAGE_QUEUES),
    )
    for name in IMAGE_TASKS:  # one node for both: they share the process's models
        app.tasks[name].node = node


@signals.worker_process_init.connect
def load_model_at_start(**_) -> None:
    """Load the serving model as the pool process starts (once per process, before its first
    batch); if it cannot be loaded, stop taking images."""
    task = app.tasks[CLASSIFY_TASK]
    if not task.node.takes_images:
        return
    try:
        task.load_serving_model()
    except ModelUnavailable as exc:
        stop_taking_images(str(exc))
        return
    # The registered candidate too, if any, so that the first shadow run does not wait.
    load_candidate_at_start(app.settings, task.process_state.candidate, load_model)


@signals.worker_ready.connect
def load_model_in_the_main_process(**_) -> None:
    """The solo and threads pools classify in the main process (a GPU worker runs solo, as
    CUDA does not survive fork): it loads the model before the first batch too."""
    if not _node().pool_processes:
        load_model_at_start()


def stop_taking_images(reason: str) -> None:
    """Log why, and have this worker's main process stop consuming the classify and counter
    queues: the images stay in the queues for workers that can classify them. Asked over
    the broker (the pool process cannot reach its parent's consumer otherwise), from a
    thread that asks until the main process answers, since it listens only once it is up."""
    stopping = _node().stopping
    if stopping.is_set():
        return
    stopping.set()
    log.error("%s; this worker takes no images until it is restarted", reason)
    threading.Thread(
        target=_cancel_classify_consumer, name="stop-taking-images", daemon=True
    ).start()


def _cancel_classify_consumer() -> None:
    node = _node().hostname
    for queue in IMAGE_QUEUES:
        _cancel_consumer(node, queue)


def _cancel_consumer(node: str | None, queue: str) -> None:
    for _ in range(300):
        try:
            if app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=1):
                log.warning("stopped consuming the %s queue", queue)
                return
        except Exception as exc:  # the broker is away: ask again
            log.warning("asking to stop consuming the %s queue: %s", queue, exc)
            time.sleep(1)
    log.error("could not stop consuming the %s queue: %s did not answer", queue, node)
