"""Classifying a batch and persisting it: the one code path behind workers and local mode."""

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from classifier.version import is_for_model
from models import ItemStatus
from refund_sorter.config import Settings
from refund_sorter.crud import ItemResult, queued_paths, record_results
from refund_sorter.db import session_factory
from refund_sorter.files import destination, inside, processed_destination, settle
from refund_sorter.images import UnreadableImage, open_rgb, sha256_bytes
from refund_sorter.messages import WorkItem

log = logging.getLogger(__name__)
# An item's outcome when its result was not stored: already stored by a redelivered task,
# or enqueued for another model.
IGNORED = "ignored"
# A task the producer did not send: its path lies outside incoming/, or its image is queued
# under another path. Nothing is read, moved or written for it.
REFUSED = "refused"


@dataclass
class BatchOutcome:
    # ItemStatus.OK, ItemStatus.FAILED, IGNORED or REFUSED, for each item of the batch
    statuses: list[tuple[WorkItem, str]] = field(default_factory=list)
    finished_sweeps: tuple[int, ...] = ()

    def _count(self, status: str) -> int:
        return sum(1 for _, s in self.statuses if s == status)

    @property
    def ok(self) -> int:
        return self._count(ItemStatus.OK)

    @property
    def failed(self) -> int:
        return self._count(ItemStatus.FAILED)

    @property
    def ignored(self) -> int:
        return self._count(IGNORED)

    @property
    def refused(self) -> int:
        return self._count(REFUSED)


def torch_threads(settings: Settings, processes: int = 1) -> int:
    """PyTorch threads for each of ``processes`` classifying processes on this machine:
    REFUND_SORTER_TORCH_THREADS when set, else the cores shared out, so that a default
    worker (one pool process per core) does not run more threads than there are cores."""
    return settings.torch_threads or max(1, (os.cpu_count() or 1) // max(1, processes))


# Decodes the images of this process's batches; sized by load_classifier.
_decoders = ThreadPoolExecutor(4)


def load_classifier(settings: Settings, processes: int = 1):
    """The model for this process, with its share of the machine's cores for PyTorch and
    for decoding (a GPU worker's one process decodes on every core)."""
    import torch

    from classifier.predict import Classifier

    global _decoders
    _decoders = ThreadPoolExecutor(max(2, (os.cpu_count() or 1) // max(1, processes)))
    torch.set_num_threads(torch_threads(settings, processes))
    return Classifier.from_path(
        settings.model_path, settings.device, settings.precision, settings.review_threshold
    )


class Unusable(NamedTuple):
    error: str
    leave_in_place: bool = False  # gone, or holding new content for the next sweep


def _prepare(item: WorkItem, src: Path, clf):
    """Read, verify and decode one image: its input tensor, or why it cannot be used."""
    try:
        data = src.read_bytes()
    except FileNotFoundError:
        return Unusable("file not found (moved or deleted after it was enqueued)", True)
    except OSError as exc:
        return Unusable(f"cannot read file: {exc}")
    if sha256_bytes(data) != item.content_hash:
        return Unusable(
            "file changed after it was enqueued; the next sweep takes the new content", True
        )
    try:
        return clf.preset(open_rgb(data, min_size=clf.checkpoint.image_size))
    except UnreadableImage as exc:
        return Unusable(str(exc))


def process_batch(items: list[WorkItem], clf, settings: Settings) -> BatchOutcome:
    """Classify ``items`` in one forward pass, store them in one transaction, then move files.

    Anyone who reaches the broker can send tasks, so a worker acts only on what the producer
    queued: a path that resolves inside ``incoming/`` and a ``queued`` row for exactly that
    path, content hash and model. Anything else is refused and logged, and its row is left
    as it is, so the genuine task still finds its image queued.
    """
    outcome = BatchOutcome()
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        queued = queued_paths(session, clf.version, (it.content_hash for it in items))
    mine: list[tuple[WorkItem, Path]] = []  # each item with its resolved path
    for it in items:
        if not is_for_model(it.model_version, clf.version):
            # Left queued, file untouched: writing it under another model's version would
            # break "one result per image and model". The next sweep after the stale delay
            # re-enqueues it.
            log.error(
                "worker has model %s but %s was enqueued for model %s",
                clf.version,
                it.path,
                it.model_version,
            )
            outcome.statuses.append((it, IGNORED))
        elif (src := inside(it.path, settings.incoming_dir)) is None:
            log.warning(
                "refused %r (%r): not inside %s", it.path, it.content_hash, settings.incoming_dir
            )
            outcome.statuses.append((it, REFUSED))
        elif it.content_hash not in queued:
            log.info(
                "nothing queued for %r (%r): already stored, or never enqueued",
                it.path,
                it.content_hash,
            )
            outcome.statuses.append((it, IGNORED))
        elif queued[it.content_hash] != it.path:
            log.warning(
                "refused %r (%r): this image is queued as %s",
                it.path,
                it.content_hash,
                queued[it.content_hash],
            )
            outcome.statuses.append((it, REFUSED))
        else:
            mine.append((it, src))

    # Pillow releases the GIL while decoding.
    prepared = list(_decoders.map(lambda pair: _prepare(*pair, clf), mine))
    good = [
        (it, x) for (it, _), x in zip(mine, prepared, strict=True) if not isinstance(x, Unusable)
    ]
    predictions = clf.predict_tensors([x for _, x in good]) if good else []
    by_hash = {it.content_hash: p for (it, _), p in zip(good, predictions, strict=True)}

    results, moves = [], {}
    for (it, src), x in zip(mine, prepared, strict=True):
        if isinstance(x, Unusable):
            dest = (
                None
                if x.leave_in_place
                else destination(src, settings.incoming_dir, settings.failed_dir, it.content_hash)
            )
            results.append(
                ItemResult(
                    it.content_hash,
                    it.model_version,
                    ItemStatus.FAILED,
                    str(dest) if dest else None,
                    error=x.error,
                )
            )
        else:
            p = by_hash[it.content_hash]
            dest = processed_destination(src, it.content_hash, settings, p.main, p.sub)
            results.append(
                ItemResult(
                    it.content_hash,
                    it.model_version,
                    ItemStatus.OK,
                    str(dest),
                    p.main,
                    p.main_confidence,
                    p.sub,
                    p.sub_confidence,
                    needs_review=p.needs_review,
                    top_subs=p.top_subs,
                )
            )
        if dest is not None:
            moves[it.content_hash] = (src, dest)

    with sessions.begin() as session:
        stored, finished = record_results(session, results)
    settle(
        [moves[h] for h in stored if h in moves],
        finished,
        sessions=sessions,
        export_dir=settings.export_dir,
    )
    outcome.statuses += [
        (it, r.status if r.content_hash in stored else IGNORED)
        for (it, _), r in zip(mine, results, strict=True)
    ]
    outcome.finished_sweeps = tuple(finished)
    return outcome
