"""The classify task's events for Flower (``report_to_flower``)."""

import contextlib
import os
from collections import Counter

from refund_sorter.celery_app import app
from worker.pipeline import NotStored

# This process's event dispatcher, made at its first report (in the pool process, after the
# fork) and kept, as Celery's own consumer keeps one: made for every batch, it cost a
# producer taken from the pool and a dispatcher with a producer of its own each time.
_held: dict[str, object] = {}


def report_to_flower(name: str, tasks, outcome, runtime: float) -> None:
    """Send each task's events: batched tasks skip Celery's own per-task events, and without
    them Flower would list the workers but none of their tasks. A batch's events go out as
    one message (a list, which Celery's event receivers accept). ``tasks``: each request
    with the items it carried and the reasons its other entries were refused. A task's
    result counts its images by outcome: ``{'ok': 31, 'failed': 1}``."""
    if not app.conf.worker_send_task_events or not tasks:
        return
    status_of = {item: status for item, status in outcome.statuses}
    hostname = tasks[0][0].hostname
    events = _dispatcher(hostname)
    events.buffer_limit = 3 * len(tasks) + 1  # flushed below, once
    try:
        for request, items, reasons in tasks:
            # Plain strings: the result is shown as its repr, and an enum's names its class.
            counts = Counter(str(status_of.get(it, NotStored.IGNORED)) for it in items)
            counts.update({str(NotStored.REFUSED): len(reasons)} if reasons else {})
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
    except Exception:
        # The broker connection broke, perhaps: the next report starts on a fresh one.
        _held.pop(hostname, None)
        with contextlib.suppress(Exception):
            events.connection.release()
        raise


def _dispatcher(hostname: str):
    """This process's dispatcher for ``hostname``'s events, made the first time."""
    events = _held.get(hostname)
    if events is None or events.pid != os.getpid():  # none yet, or the parent's
        events = _held[hostname] = app.events.Dispatcher(
            app.connection_for_write(),
            hostname=hostname,
            buffer_while_offline=False,
            buffer_group=frozenset({"task"}),
        )
    return events
