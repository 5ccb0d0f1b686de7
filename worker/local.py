"""Local mode: classify a sweep's work items in this process, without a broker.

``refund-sorter sweep --local`` hands ``local_dispatch(settings)`` to the producer; it runs
the same ``process_batch`` as the Celery workers, one batch at a time.
"""

from tqdm import tqdm

from refund_sorter.config import Settings
from refund_sorter.messages import Dispatch, WorkItem
from worker.pipeline import load_classifier, process_batch


def local_dispatch(settings: Settings, progress: bool = False) -> Dispatch:
    def dispatch(items: list[WorkItem]) -> None:
        clf = load_classifier(settings)
        with tqdm(total=len(items), desc="classifying", unit="img", disable=not progress) as bar:
            for start in range(0, len(items), settings.batch_size):
                chunk = items[start : start + settings.batch_size]
                process_batch(chunk, clf, settings)
                bar.update(len(chunk))

    return dispatch
