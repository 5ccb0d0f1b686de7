"""Celery workers and beat. Start them with::

celery -A worker worker --loglevel INFO      # classifies batches of images, runs sweeps
celery -A worker beat --loglevel INFO        # enqueues the nightly sweep and the stall check
refund-sorter flower                         # dashboard on http://127.0.0.1:5555, behind the
                                             # basic auth in REFUND_SORTER_FLOWER_BASIC_AUTH

The app itself is ``refund_sorter.celery_app.app``; it names this package's tasks
(``worker.tasks``) and the producer's (``producer.tasks``), and a worker imports both.
"""

from refund_sorter.celery_app import app

__all__ = ["app"]
