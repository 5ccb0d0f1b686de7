"""Publishing work items to the broker: one task per image, over one connection."""

from kombu.exceptions import OperationalError

from producer.sweep import WorkItem
from refund_sorter.errors import UserError


def publish(items: list[WorkItem], countdown: float | None = None) -> None:
    """Publish one classify task per item (``countdown``: seconds before it may run)."""
    from worker.celery_app import CLASSIFY_TASK, app

    try:
        # One producer (one connection and channel) for the whole fan-out: 10,000 tasks
        # are published in seconds instead of opening a connection per task.
        with app.producer_or_acquire() as producer:
            for item in items:
                app.send_task(
                    CLASSIFY_TASK, args=item.as_args(), countdown=countdown, producer=producer
                )
    except OperationalError as exc:
        raise UserError(f"cannot reach the broker at {app.conf.broker_url}: {exc}") from None
