"""The one Celery app (Redis broker, JSON only, results in SQL, nightly beat) and
``publish``, the one way work items reach the broker.

The app is built once per process from the settings and carries them (``app.settings``),
so tasks read the settings their process started with. Workers, beat and Flower load it
through ``celery -A worker``. The tasks live with their roles (``worker.tasks``,
``producer.tasks``) and are named by string here, so this module imports neither role.
"""

import logging

from celery import Celery
from celery.schedules import crontab
from kombu import Queue
from kombu.exceptions import ChannelError, OperationalError

from refund_sorter.config import Settings, get_settings
from refund_sorter.errors import UserError
from refund_sorter.messages import (
    ANSWERED_CHANNEL,
    CLASSIFY_QUEUE,
    COUNTER_QUEUE,
    COUNTER_TASK,
    IMAGES_PER_TASK,
    RESUME_TASK,
    SWEEP_QUEUE,
    SWEEP_TASK,
    TASK_OF_QUEUE,
    WorkItem,
    task_args,
)
from refund_sorter.redact import redact

log = logging.getLogger(__name__)


def nightly_schedule(expression: str) -> crontab:
    """A crontab from a five-field cron expression such as ``0 2 * * *``."""
    fields = expression.split()
    if len(fields) != 5:
        raise UserError(f"REFUND_SORTER_SWEEP_CRON must have five fields, got {expression!r}")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except ValueError as exc:
        raise UserError(f"REFUND_SORTER_SWEEP_CRON {expression!r} is not valid: {exc}") from None


class SorterCelery(Celery):
    """The Celery app with the settings it was built from."""

    def __init__(self, settings: Settings, **kwargs) -> None:
        super().__init__("refund_sorter", broker=settings.broker_url, **kwargs)
        self.settings = settings
        self.conf.update(
            # JSON only: a pickled message could run code on the worker.
            task_serializer="json",
            accept_content=["json"],
            # Queues by role, so the producer can run where PyTorch is not installed (-Q sweep)
            # and model workers take only images (-Q classify,counter); a plain worker consumes
            # them all. The returns counter's photos have their own queue: one waits behind
            # no night in the broker, and a worker may be kept for them alone (-Q counter).
            task_queues=(Queue(CLASSIFY_QUEUE), Queue(COUNTER_QUEUE), Queue(SWEEP_QUEUE)),
            task_default_queue=CLASSIFY_QUEUE,
            task_routes={
                SWEEP_TASK: {"queue": SWEEP_QUEUE},
                RESUME_TASK: {"queue": SWEEP_QUEUE},
                COUNTER_TASK: {"queue": COUNTER_QUEUE},
            },
            # Results are rows in SQL; storing them in Redis too would only fill it.
            task_ignore_result=True,
            result_backend=None,
            # Ack after the batch is committed, so a worker that dies mid-batch loses nothing:
            # its unacked messages go back to the queue. The SQL rows make a redelivery harmless.
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            # Batching needs the messages in hand: a worker may hold two full batches per
            # process (prefetch = 2 x tasks per batch x processes) instead of Celery's default
            # of four messages, so that the next batch is ready when a process finishes one
            # rather than fetched while that process waits.
            worker_prefetch_multiplier=2 * settings.tasks_per_batch,
            # Redis re-delivers a message left unacked this long, taking its worker for lost. So
            # it must outlast the longest a live worker holds one: the wait to fill a batch, the
            # batches ahead and its own (prefetch = two batches per process)
            # and, for a retry, its countdown, since Redis has no delayed delivery and the worker
            # holds a countdown message unacked until it is due. Settings checks that bound
            # (REFUND_SORTER_VISIBILITY_TIMEOUT). A lost worker's messages need not wait for it:
            # the stall check publishes a stalled sweep's queued images again within minutes.
            broker_transport_options={"visibility_timeout": settings.visibility_timeout},
            broker_connection_retry_on_startup=True,
            # Each pool process loads the model when it starts (worker.lifecycle), which takes
            # seconds; Celery's default of 4 s to report up would kill it and fork again.
            worker_proc_alive_timeout=120,
            # Events feed Flower's live view of workers and tasks. (No "sent" events: they would
            # double the cost of publishing a night's fan-out.)
            worker_send_task_events=True,
            timezone=settings.timezone,
            enable_utc=True,
            beat_schedule={
                "nightly-sweep": {
                    "task": SWEEP_TASK,
                    "schedule": nightly_schedule(settings.sweep_cron),
                    "kwargs": {"trigger": "beat"},
                },
                # Re-publishes the queued images of a sweep that stopped making progress with
                # nothing left in the queue (a broker restarted empty, a worker killed): they
                # are settled within minutes, not after REFUND_SORTER_SWEEP_STALE_HOURS.
                "resume-stalled-sweep": {
                    "task": RESUME_TASK,
                    "schedule": settings.sweep_stall_check_seconds,
                    # A check nobody took in time is superseded by the next one.
                    "options": {"expires": settings.sweep_stall_check_seconds},
                },
            },
        )


app = SorterCelery(get_settings(), include=["worker.tasks", "producer.tasks"])


def publish(
    items: list[WorkItem], countdown: float | None = None, queue: str = CLASSIFY_QUEUE
) -> None:
    """Publish ``items`` as classify tasks of up to IMAGES_PER_TASK images each, in order
    (``countdown``: seconds before they may run), on ``queue``: ``classify`` for a night's,
    ``counter`` for the returns counter's, one image per task (a worker flushes each at
    once, so a task of several would only make the first image wait for the last)."""
    task, size = TASK_OF_QUEUE[queue], IMAGES_PER_TASK if queue == CLASSIFY_QUEUE else 1
    try:
        # One producer (one connection and channel) for the whole fan-out.
        with app.producer_or_acquire() as producer:
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                app.send_task(
                    task,
                    args=task_args(chunk),
                    countdown=countdown,
                    producer=producer,
                    queue=queue,
                )
    except OperationalError as exc:
        message = f"cannot reach the broker at {app.conf.broker_url}: {exc}"
        raise UserError(redact(message)) from None


def announce(items: list[WorkItem]) -> None:
    """Tell the API processes that the rows of ``items`` were just written (published on
    ANSWERED_CHANNEL, on the broker's own connection). Best effort: a request that hears
    nothing looks at its row again a moment later anyway."""
    if not items:
        return
    try:
        with app.producer_or_acquire() as producer:
            client = getattr(producer.channel, "client", None)  # a Redis broker's
            if client is not None:
                client.publish(ANSWERED_CHANNEL, " ".join({it.content_hash for it in items}))
    except Exception as exc:  # the broker is away: the batch's rows are written all the same
        log.warning("could not announce %d answered photos: %s", len(items), redact(str(exc)))


def queue_depth(channel, queue_name: str) -> int:
    """How many messages wait in a queue (every priority's list; not those workers hold
    unacked), 0 for a queue the broker lacks: Redis drops an empty list, and one restarted
    without its data has none."""
    try:
        return channel.queue_declare(queue_name, passive=True).message_count
    except ChannelError:
        return 0


def classify_queue_depth(queue_name: str = CLASSIFY_QUEUE) -> int:
    """How many classify messages wait in the broker: ``queue_depth`` of the classify queue
    (or of the counter's)."""
    with app.connection_for_read() as conn:
        try:
            with conn.channel() as channel:
                return queue_depth(channel, queue_name)
        except conn.connection_errors as exc:
            message = f"cannot reach the broker at {app.conf.broker_url}: {exc}"
            raise UserError(redact(message)) from None
