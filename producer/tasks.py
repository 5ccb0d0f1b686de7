"""The producer's Celery tasks, both sent by beat to the ``sweep`` queue: the nightly sweep,
and the frequent check that the running sweep still makes progress (and the returns
counter's photos too: ``producer.counter``)."""

import logging
from functools import partial

from producer.counter import close_ended_counter_days, resume_stalled_counter
from producer.sweep import resume_stalled_sweep, run_sweep
from refund_sorter.celery_app import app, classify_queue_depth, publish
from refund_sorter.messages import COUNTER_QUEUE, RESUME_TASK, SWEEP_TASK

log = logging.getLogger(__name__)


@app.task(name=SWEEP_TASK, bind=True)
def sweep(self, trigger: str = "beat") -> dict:
    report = run_sweep(self.app.settings, dispatch=publish, trigger=trigger)
    run = report.run
    log.info(
        "sweep %s %s: found %d, enqueued %d, failed %d, known %d%s",
        run.id,
        run.status,
        run.found,
        run.enqueued,
        run.failed,
        run.known,
        f" ({run.message})" if run.message else "",
    )
    return {"sweep_run": run.id, "status": run.status, "enqueued": run.enqueued}


@app.task(name=RESUME_TASK, bind=True)
def resume_stalled(self) -> int | None:
    """Publish the running sweep's queued images again if it stalled (see
    ``producer.sweep.resume_stalled_sweep``); the same for the returns counter's photos, and
    close the counter's days that ended (``producer.counter``)."""
    settings = self.app.settings
    try:
        resume_stalled_counter(
            settings,
            dispatch=partial(publish, queue=COUNTER_QUEUE),
            queue_depth=partial(classify_queue_depth, COUNTER_QUEUE),
        )
        close_ended_counter_days(settings)
    except Exception:  # the night's check must run whatever the counter's meets
        log.exception("the returns counter's part of the stall check failed")
    return resume_stalled_sweep(settings, dispatch=publish, queue_depth=classify_queue_depth)
