"""Celery workers and beat. Start them with::

celery -A worker worker --loglevel INFO      # classifies batches of images
celery -A worker beat --loglevel INFO        # enqueues the nightly sweep
celery -A worker flower                      # dashboard on http://localhost:5555
"""

from worker.celery_app import app

__all__ = ["app"]
