"""The classify task's events for Flower (``report_to_flower``)."""

from collections import Counter

from refund_sorter.celery_app import app
from worker.pipeline import NotStored


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
