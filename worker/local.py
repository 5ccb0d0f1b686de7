"""Local mode: classify a sweep's work items in this process, without a broker.

``refund-sorter sweep --local`` hands ``local_dispatch(settings)`` to the producer; it runs
the same ``process_batch`` as the Celery workers, one batch at a time, with the model each
item was enqueued for, loaded from the model store as a worker loads it.
"""

from tqdm import tqdm

from refund_sorter.config import Settings
from refund_sorter.messages import Dispatch, WorkItem, by_model
from worker.pipeline import ProcessState, load_classifier, process_batch


def local_dispatch(settings: Settings, progress: bool = False) -> Dispatch:
    def dispatch(items: list[WorkItem]) -> None:
        state = ProcessState.sharing_cores()
        with tqdm(total=len(items), desc="classifying", unit="img", disable=not progress) as bar:
            for version, group in by_model(items).items():  # one model per sweep: one group
                clf = load_classifier(settings, version)
                for start in range(0, len(group), settings.batch_size):
                    chunk = group[start : start + settings.batch_size]
                    process_batch(chunk, clf, settings, state)
                    bar.update(len(chunk))
        state.decoders.shutdown()

    return dispatch
