"""The producer's Celery tasks, both sent by beat to the ``sweep`` queue: the nightly sweep,
and the frequent check that the running sweep still makes progress."""

import logging

from producer.sweep import resume_stalled_sweep, run_sweep
from refund_sorter.celery_app import app, classify_queue_depth, publish
from refund_sorter.messages import RESUME_TASK, SWEEP_TASK

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
    ``producer.sweep.resume_stalled_sweep``)."""
    return resume_stalled_sweep(
        self.app.settings, dispatch=publish, queue_depth=classify_queue_depth
    )
