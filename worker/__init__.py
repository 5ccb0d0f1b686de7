"""Celery workers and beat. Start them with::

celery -A worker worker --loglevel INFO      # classifies batches of images, runs sweeps
celery -A worker beat --loglevel INFO        # enqueues the nightly sweep and the stall check
celery -A worker flower --basic-auth=USER:PASSWORD   # dashboard on http://localhost:5555

The app itself is ``refund_sorter.celery_app.app``; it names this package's tasks
(``worker.tasks``) and the producer's (``producer.tasks``), and a worker imports both.
"""

from refund_sorter.celery_app import app

__all__ = ["app"]
