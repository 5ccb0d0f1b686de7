"""The message contract between the producer and the workers (torch-free).

The producer publishes one ``classify`` task per image and Celery beat one ``sweep`` task
per night; both sides import the names and the payload from here, so neither imports the
other.
"""

from collections.abc import Callable
from dataclasses import dataclass

SWEEP_TASK = "refund_sorter.sweep"
CLASSIFY_TASK = "refund_sorter.classify"
CLASSIFY_QUEUE = "classify"
SWEEP_QUEUE = "sweep"


@dataclass(frozen=True)
class WorkItem:
    """What a task carries: where the image is and what it should contain, never its bytes."""

    path: str
    content_hash: str
    model_version: str

    def as_args(self) -> list[str]:
        return [self.path, self.content_hash, self.model_version]

    @classmethod
    def from_args(cls, args) -> "WorkItem":
        """The item a task's arguments describe; ValueError for anything but three strings
        (a message this project did not send, which must not break the batch it lands in)."""
        if not (
            isinstance(args, list | tuple)
            and len(args) == 3
            and all(isinstance(a, str) for a in args)
        ):
            raise ValueError(f"not a classify task's arguments: {args!r:.200}")
        return cls(*args)


# Hands a sweep's work items to whoever classifies them: the broker, or this process.
Dispatch = Callable[[list[WorkItem]], None]
