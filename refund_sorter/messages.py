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


# Hands a sweep's work items to whoever classifies them: the broker, or this process.
Dispatch = Callable[[list[WorkItem]], None]
