"""The message contract between the producer and the workers (torch-free).

The producer publishes ``classify`` tasks of up to ``IMAGES_PER_TASK`` images each, Celery
beat one ``sweep`` task per night and a stall check every minute; the returns counter's API
publishes ``classify_counter`` tasks of one image each, on a queue of their own, which the
workers classify as soon as they take them. Every side imports the names and the payload
from here, so none imports another.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

SWEEP_TASK = "refund_sorter.sweep"
# Beat's periodic check that the running sweep still makes progress (producer.tasks).
RESUME_TASK = "refund_sorter.resume_stalled_sweep"
CLASSIFY_TASK = "refund_sorter.classify"
CLASSIFY_QUEUE = "classify"
SWEEP_QUEUE = "sweep"
# The returns counter's photos: the same work item and pipeline as a night's, a task of its
# own so that a worker flushes each message at once (worker.tasks), and a queue of its own
# so that a counter photo never waits behind a night's messages in the broker.
COUNTER_TASK = "refund_sorter.classify_counter"
COUNTER_QUEUE = "counter"
# Where the workers say which photos' rows they have just written (Redis pub/sub: each
# message the content hashes of one batch, separated by spaces), so that the API's requests
# waiting for those rows read them at once rather than looking again and again.
ANSWERED_CHANNEL = "refund-sorter:answered"
# The task each queue's work items travel as.
TASK_OF_QUEUE = {CLASSIFY_QUEUE: CLASSIFY_TASK, COUNTER_QUEUE: COUNTER_TASK}
# Images one classify task carries. A worker pays for every message it takes (a Redis round
# trip to fetch it, two to track and acknowledge it, its events): per image, that cost more
# than decoding and classifying the image (docs/performance.md). Per 32 images it is noise.
IMAGES_PER_TASK = 32


@dataclass(frozen=True)
class WorkItem:
    """What a task carries: where the image is and what it should contain, never its bytes."""

    path: str
    content_hash: str
    model_version: str
    attempt: int = 0  # how many times a batch holding this item failed before

    def as_args(self) -> list:
        # A first attempt carries three arguments, as messages always did, so messages
        # published before retries were counted still read the same.
        args = [self.path, self.content_hash, self.model_version]
        return [*args, self.attempt] if self.attempt else args

    def next_attempt(self) -> "WorkItem":
        return replace(self, attempt=self.attempt + 1)

    @classmethod
    def from_args(cls, args) -> "WorkItem":
        """The item a task's arguments describe: three strings, then the attempt (a positive
        whole number) on a retry. ValueError for anything else: a message this project did
        not send, which must not break the batch it lands in."""
        valid = (
            isinstance(args, list | tuple)
            and len(args) in (3, 4)
            and all(isinstance(a, str) for a in args[:3])
            and (len(args) == 3 or (type(args[3]) is int and args[3] > 0))
        )
        if not valid:
            raise ValueError(f"not a classify task's arguments: {args!r:.200}")
        return cls(*args)


def by_model(items: Iterable[WorkItem]) -> dict[str, list[WorkItem]]:
    """``items`` grouped by the model version each was enqueued for: the groups in the order
    their versions first appear, each in the items' order. Whoever classifies them (a
    worker's batch, local mode) runs each group through its own model."""
    groups: dict[str, list[WorkItem]] = {}
    for it in items:
        groups.setdefault(it.model_version, []).append(it)
    return groups


def task_args(items: list["WorkItem"]) -> list:
    """A classify task's arguments: one, the list of its items' arguments."""
    return [[it.as_args() for it in items]]


def read_task(args) -> tuple[list[WorkItem], list[str]]:
    """The items a classify task's arguments carry, and why each entry that is not an item
    was refused (a message this project did not send, or published before tasks carried
    several images: the stall check publishes those images again). A task of more than
    IMAGES_PER_TASK entries is refused whole: none was published, and it could hold any
    number."""
    valid = (
        isinstance(args, list | tuple)
        and len(args) == 1
        and isinstance(args[0], list)
        and len(args[0]) <= IMAGES_PER_TASK
    )
    if not valid:
        return [], [f"not a classify task's arguments: {args!r:.200}"]
    items, refused = [], []
    for entry in args[0]:
        try:
            items.append(WorkItem.from_args(entry))
        except ValueError as exc:
            refused.append(str(exc))
    return items, refused


# Hands a sweep's work items to whoever classifies them: the broker, or this process.
Dispatch = Callable[[list[WorkItem]], None]
