"""Classifying a batch and persisting it: the one code path behind workers and local mode.

``process_batch`` takes a batch through five steps, one function each: ``admit`` (only what
the producer queued, and the review threshold in force for the batch), ``prepare`` (read,
verify, decode), ``predict`` (one forward pass), ``record`` (one transaction) and ``file``
(each file where its row says, the rows of the files that could not be moved corrected, and
the CSV of each sweep the batch finished: ``refund_sorter.filing``); last the shadow run of a
registered candidate model (``worker.shadow``), which changes none of it.
"""

import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from sqlalchemy.orm import Session, sessionmaker

from models import ItemStatus
from refund_sorter.arrival import still_being_written
from refund_sorter.audit import is_audited, sub_margin
from refund_sorter.config import Settings
from refund_sorter.crud import ItemResult, queued_paths, record_results
from refund_sorter.db import session_factory, statement_by_statement
from refund_sorter.errors import UserError
from refund_sorter.files import Folders
from refund_sorter.filing import Move, file_committed
from refund_sorter.images import UnreadableImage, open_rgb, sha256_bytes
from refund_sorter.messages import WorkItem
from refund_sorter.review_threshold import review_threshold_in_force
from registry.registry import ensure_model_file
from registry.version import is_for_model
from worker.shadow import CandidateSlot, Classified, registered_candidate, shadow

log = logging.getLogger(__name__)


class NotStored(StrEnum):
    """An item's outcome when the batch stored no result for it (``ItemStatus`` otherwise)."""

    # Already stored by a redelivered task, or enqueued for another model.
    IGNORED = "ignored"
    # A task the producer did not send: its path lies outside incoming/ and counter/, or its
    # image is queued under another path. Nothing is read, moved or written for it.
    REFUSED = "refused"


@dataclass
class BatchOutcome:
    # ItemStatus.OK, FAILED or DEFERRED, NotStored.IGNORED or REFUSED, for each item
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
    def deferred(self) -> int:
        return self._count(ItemStatus.DEFERRED)

    @property
    def ignored(self) -> int:
        return self._count(NotStored.IGNORED)

    @property
    def refused(self) -> int:
        return self._count(NotStored.REFUSED)


def torch_threads(settings: Settings, processes: int = 1) -> int:
    """PyTorch threads for each of ``processes`` classifying processes on this machine:
    REFUND_SORTER_TORCH_THREADS when set, else the cores shared out, so that a default
    worker (one pool process per core) does not run more threads than there are cores."""
    return settings.torch_threads or max(1, (os.cpu_count() or 1) // max(1, processes))


@dataclass
class ProcessState:
    """What one classifying process keeps from one batch to the next: the threads that decode
    its images (Pillow releases the GIL while decoding), the review threshold it last applied
    for each model (a change is logged), and the shadow runs' candidate. A worker's is held
    by the classify task's base class (``worker.tasks.ClassifierTask``), one per process;
    local mode makes its own."""

    decoders: ThreadPoolExecutor
    applied: dict[str, float] = field(default_factory=dict)
    candidate: CandidateSlot = field(default_factory=CandidateSlot)

    @classmethod
    def sharing_cores(cls, processes: int = 1) -> "ProcessState":
        """For one of ``processes`` classifying processes on this machine: its share of the
        cores for decoding (a GPU worker's one process decodes on every core)."""
        return cls(ThreadPoolExecutor(max(2, (os.cpu_count() or 1) // max(1, processes))))


def load_classifier(settings: Settings, version: str, processes: int = 1):
    """The model ``version`` from the model store, for this process, with its share of the
    machine's cores for PyTorch. Its own review threshold is the model file's: ``admit``
    reads the one in force for each batch. NotInStore when the registry has no file for that
    version (before anything is loaded); ModelUnavailable when the file cannot be loaded, or
    is another model."""
    import torch

    path = ensure_model_file(settings, version)
    torch.set_num_threads(torch_threads(settings, processes))
    return _load(settings, path, version)


def load_model(settings: Settings, version: str):
    """The model ``version`` from the model store, loaded as ``load_classifier`` loads it but
    leaving this process's threads as they are: a shadow run's candidate (``worker.shadow``)
    runs beside the serving model. The same errors."""
    return _load(settings, ensure_model_file(settings, version), version)


def _load(settings: Settings, path: Path, version: str):
    from classifier.predict import Classifier

    try:
        clf = Classifier.from_path(
            path,
            settings.device,
            settings.precision,
            runtime=settings.runtime,
            store=Path(settings.model_store),
        )
    except Exception as exc:
        raise ModelUnavailable(f"cannot load the model {path}: {exc}") from exc
    if clf.version != version:
        raise ModelUnavailable(f"cannot load the model {path}: it is model {clf.version}")
    return clf


class ModelUnavailable(UserError):
    """A model's file cannot be loaded: this process can classify nothing with it."""


class Unusable(NamedTuple):
    """Why an admitted item cannot be classified, and what becomes of its file."""

    error: str
    status: str = ItemStatus.FAILED  # or ItemStatus.DEFERRED: still being written
    to_failed: bool = True  # False: left where it is (gone, or left for a later sweep)


# Each item the batch acts on, with its path resolved inside incoming/ (or counter/).
Admitted = tuple[WorkItem, Path]


def process_batch(
    items: list[WorkItem], clf, settings: Settings, state: ProcessState | None = None
) -> BatchOutcome:
    """Classify ``items`` in one forward pass, store them in one transaction, then move files;
    with this process's ``state`` (a state of its own for this batch alone when None).

    Anyone who reaches the broker can send tasks, so a worker acts only on what the producer
    (or the returns counter's API) queued: a path that resolves inside ``incoming/`` (or the
    counter's folder) and a ``queued`` row for exactly that path, content hash and model.
    Anything else is refused and logged, and its row is left as it is, so the genuine task
    still finds its image queued.
    """
    if state is None:
        state = ProcessState.sharing_cores()
        try:
            return process_batch(items, clf, settings, state)
        finally:
            state.decoders.shutdown()
    sessions = session_factory(settings.database_url)
    folders = Folders.of(settings)
    with statement_by_statement(sessions) as session:  # every read of the batch, as it starts
        admitted, others, threshold = admit(items, clf, session, settings, folders, state.applied)
        candidate = registered_candidate(session)
    prepared = prepare(admitted, clf, settings, state.decoders)
    started = time.perf_counter()
    classified = predict(prepared, clf, threshold)
    forward = time.perf_counter() - started
    results, stored = record(admitted, classified, threshold, settings, folders, sessions)
    finished = file(admitted, results, stored, settings, sessions)
    filed = [
        Classified(r, src, x)
        for (_, src), x, r in zip(admitted, prepared, results, strict=True)
        if r.status == ItemStatus.OK and r.content_hash in stored
    ]
    usable = sum(1 for x in prepared if not isinstance(x, Unusable))
    shadow(
        filed,
        clf,
        forward / max(1, usable),
        settings,
        sessions,
        state.decoders,
        state.candidate,
        load_model,
        candidate,
    )
    statuses = [
        (it, r.status if r.content_hash in stored else NotStored.IGNORED)
        for (it, _), r in zip(admitted, results, strict=True)
    ]
    return BatchOutcome(others + statuses, tuple(finished))


def admit(
    items: list[WorkItem],
    clf,
    session: Session,
    settings: Settings,
    folders: Folders,
    applied: dict[str, float],
) -> tuple[list[Admitted], list[tuple[WorkItem, str]], float]:
    """The items this worker acts on, each with its resolved path; the others, each
    ``NotStored.IGNORED`` (another model's, or nothing queued) or ``REFUSED`` (not what was
    queued); and the review threshold in force for ``clf``'s model, read for every batch so
    that one set meanwhile applies without a restart (logged when it differs from the one
    ``applied`` last, which it updates). Reads in ``session``, the batch's reading one."""
    queued = queued_paths(session, clf.version, (it.content_hash for it in items))
    threshold = review_threshold_in_force(
        session, settings, model_version=clf.version, model_threshold=clf.review_threshold
    )
    if applied.get(clf.version) != threshold.value:
        applied[clf.version] = threshold.value
        log.info(
            "review threshold for model %s: %s, %s", clf.version, threshold.value, threshold.why
        )
    admitted: list[Admitted] = []
    others: list[tuple[WorkItem, str]] = []
    for it in items:
        if not is_for_model(it.model_version, clf.version):
            # Left queued, file untouched: writing it under another model's version would
            # break "one result per image and model". A worker hands each model only the
            # items enqueued for it (worker.tasks), so this is a caller's mistake.
            log.error(
                "worker has model %s but %s was enqueued for model %s",
                clf.version,
                it.path,
                it.model_version,
            )
            others.append((it, NotStored.IGNORED))
        elif (src := folders.inside_sources(it.path)) is None:
            log.warning(
                "refused %r (%r): not inside %s nor %s",
                it.path,
                it.content_hash,
                settings.incoming_dir,
                settings.counter_dir,
            )
            others.append((it, NotStored.REFUSED))
        elif it.content_hash not in queued:
            log.info(
                "nothing queued for %r (%r): already stored, or never enqueued",
                it.path,
                it.content_hash,
            )
            others.append((it, NotStored.IGNORED))
        elif queued[it.content_hash] != it.path:
            log.warning(
                "refused %r (%r): this image is queued as %s",
                it.path,
                it.content_hash,
                queued[it.content_hash],
            )
            others.append((it, NotStored.REFUSED))
        else:
            admitted.append((it, src))
    return admitted, others, threshold.value


def prepare(
    admitted: list[Admitted], clf, settings: Settings, decoders: ThreadPoolExecutor
) -> list:
    """Each item's input tensor, or why it cannot be used (``Unusable``), decoded on the
    process's ``decoders``."""
    return list(decoders.map(lambda pair: _prepare_one(*pair, clf, settings), admitted))


def _prepare_one(item: WorkItem, src: Path, clf, settings: Settings):
    """Read, verify and decode one image: its input tensor, or why it cannot be used."""
    try:
        with open(src, "rb") as fh:
            data = fh.read()
            modified = os.fstat(fh.fileno()).st_mtime
    except FileNotFoundError:
        return Unusable("file not found (moved or deleted after it was enqueued)", to_failed=False)
    except OSError as exc:
        return Unusable(f"cannot read file: {exc}")
    if sha256_bytes(data) != item.content_hash:
        # Not the bytes the scan read: the next sweep takes what the file holds by then.
        why = still_being_written(modified, settings.settle_seconds, changed=True)
        return Unusable(why, ItemStatus.DEFERRED, to_failed=False)
    try:
        return clf.preset(open_rgb(data, min_size=clf.checkpoint.image_size))
    except UnreadableImage as exc:
        if why := still_being_written(modified, settings.settle_seconds):
            return Unusable(f"{exc}; {why}", ItemStatus.DEFERRED, to_failed=False)
        return Unusable(str(exc))


def predict(prepared: list, clf, review_threshold: float) -> list:
    """Each item's classification from one forward pass over the usable ones (flagged below
    ``review_threshold``), or its ``Unusable``."""
    usable = [x for x in prepared if not isinstance(x, Unusable)]
    predictions = iter(clf.predict_tensors(usable, review_threshold) if usable else [])
    return [x if isinstance(x, Unusable) else next(predictions) for x in prepared]


def record(
    admitted: list[Admitted],
    classified: list,
    review_threshold: float,
    settings: Settings,
    folders: Folders,
    sessions: sessionmaker[Session],
) -> tuple[list[ItemResult], dict[str, int]]:
    """Store the batch's results in one transaction, each naming where its file goes, whether
    it was drawn for the audit, and the audit rate and review threshold it was classified
    under. Returns them and the hashes stored, each with its row's sweep."""
    results = []
    for (it, src), x in zip(admitted, classified, strict=True):
        if isinstance(x, Unusable):
            dest = None
            if x.to_failed:
                dest = folders.failed_destination(src, it.content_hash)
            results.append(
                ItemResult(
                    it.content_hash,
                    it.model_version,
                    x.status,
                    str(dest) if dest else None,
                    error=x.error,
                )
            )
        else:
            dest = folders.processed_destination(src, it.content_hash, x.main, x.sub)
            results.append(
                ItemResult(
                    it.content_hash,
                    it.model_version,
                    ItemStatus.OK,
                    str(dest),
                    x.main,
                    x.main_confidence,
                    x.sub,
                    x.sub_confidence,
                    needs_review=x.needs_review,
                    top_subs=x.top_subs,
                    sub_margin=sub_margin(x.top_subs),
                    audited=is_audited(
                        it.content_hash,
                        it.model_version,
                        settings.audit_seed,
                        settings.audit_rate,
                        needs_review=x.needs_review,
                    ),
                    audit_rate=settings.audit_rate,
                    review_threshold=review_threshold,
                )
            )
    with sessions.begin() as session:
        stored = record_results(session, results)
    for (it, _), r in zip(admitted, results, strict=True):
        if r.status == ItemStatus.DEFERRED and r.content_hash in stored:
            log.info("left %s in incoming/ for later: %s", it.path, r.error)
    return results, stored


def file(
    admitted: list[Admitted],
    results: list[ItemResult],
    stored: dict[str, int],
    settings: Settings,
    sessions: sessionmaker[Session],
) -> list[int]:
    """Move each stored result's file where its row says, correct the rows of the files that
    could not be moved (no final path, and why: the next sweep files a classified photo it
    finds still in incoming/), and count the stored photos filed; returns the sweeps this
    finished, each with its CSV written."""
    moves = [
        Move(src, Path(r.final_path), (stored[r.content_hash], it.path))
        for (it, src), r in zip(admitted, results, strict=True)
        if r.final_path is not None and r.content_hash in stored
    ]
    return file_committed(sessions, moves, Counter(stored.values()), settings.export_dir)
