"""The message contract between the producer and the workers (torch-free).

The producer publishes one ``classify`` task per image, Celery beat one ``sweep`` task per
night and a stall check every minute; both sides import the names and the payload from
here, so neither imports the other.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

SWEEP_TASK = "refund_sorter.sweep"
# Beat's periodic check that the running sweep still makes progress (producer.tasks).
RESUME_TASK = "refund_sorter.resume_stalled_sweep"
CLASSIFY_TASK = "refund_sorter.classify"
CLASSIFY_QUEUE = "classify"
SWEEP_QUEUE = "sweep"


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


# Hands a sweep's work items to whoever classifies them: the broker, or this process.
Dispatch = Callable[[list[WorkItem]], None]
