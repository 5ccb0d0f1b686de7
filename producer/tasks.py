"""The producer's Celery task: the nightly sweep, sent by beat to the ``sweep`` queue."""

import logging

from producer.sweep import run_sweep
from refund_sorter.celery_app import app, publish
from refund_sorter.messages import SWEEP_TASK

log = logging.getLogger(__name__)


@app.task(name=SWEEP_TASK, bind=True)
def sweep(self, trigger: str = "beat") -> dict:
    report = run_sweep(self.app.settings, dispatch=publish, trigger=trigger)
    run = report.run
    log.info(
        "sweep %s %s: found %d, enqueued %d, failed %d, skipped %d%s",
        run.id,
        run.status,
        run.found,
        run.enqueued,
        run.failed,
        run.skipped,
        f" ({run.message})" if run.message else "",
    )
    return {"sweep_run": run.id, "status": run.status, "enqueued": run.enqueued}
