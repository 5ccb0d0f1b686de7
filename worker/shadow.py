"""Shadow runs: while a candidate model is registered, each batch's photos that people will
label, and a share of the others (``refund_sorter.shadow``), are classified by the candidate
too, and its answers stored in ``shadow_predictions`` and nowhere else.

``process_batch`` calls ``shadow`` once the batch's rows are committed, its files moved and
its sweep's CSV written, so a shadow run never delays or changes how a photo is filed. It
reuses the batch's decoded images when the candidate takes the same input (size and resize
rule; each model normalises with its own mean and std in its forward pass), else decodes the
files again where they were filed. Its rows are written by ``crud.record_shadow`` in a
transaction of their own.

A process holds one candidate at most, in its ``CandidateSlot`` (part of the state the
classify task keeps per process, ``worker.pipeline.ProcessState``). Which candidate is
registered is asked as every batch starts, in the session of its other reads
(``registered_candidate``), so registering, promoting or retiring one applies from the next
batch on without a restart; a candidate no longer registered is let
go. A candidate that cannot be loaded, or whose forward pass raises, logs one error (once
per version and process), and the batches go on exactly as without it; it is tried again,
silently, after ``RETRY_SECONDS``.
"""

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from refund_sorter import crud
from refund_sorter.config import Settings
from refund_sorter.crud import ItemResult, ShadowAnswer
from refund_sorter.db import session_factory
from refund_sorter.images import UnreadableImage, open_rgb, sha256_bytes
from refund_sorter.review_threshold import review_threshold_in_force
from refund_sorter.shadow import shadow_probability

log = logging.getLogger(__name__)

# How long a candidate that failed is left alone before this process tries it again (its
# file may have been stored again meanwhile). Short enough for a night, long enough that a
# broken file costs next to nothing.
RETRY_SECONDS = 600.0


# Loads a model version from the store, as the serving model is loaded (``worker.pipeline``).
Loader = Callable[[Settings, str], object]


@dataclass
class _Held:
    version: str
    model: object | None  # None: it failed, at ``failed_at`` (time.monotonic())
    failed_at: float = 0.0


@dataclass
class CandidateSlot:
    """The candidate model one process holds for shadow runs (one at most), and the candidate
    versions whose failure it has logged: each is logged once."""

    held: _Held | None = None
    reported: set[str] = field(default_factory=set)

    def get(self, settings: Settings, version: str, load: Loader):
        """The loaded candidate ``version``, loading it (and letting another go) if need be;
        None while it is failing."""
        held = self.held
        if (
            held is not None
            and held.version == version
            and (held.model is not None or time.monotonic() - held.failed_at < RETRY_SECONDS)
        ):
            return held.model
        self.let_go(f"model {version} is the candidate now")  # one candidate in memory at most
        try:
            model = load(settings, version)
        except Exception as exc:
            self.failed(version, "cannot be loaded", exc)
            return None
        self.held = _Held(version, model)
        log.info("loaded candidate model %s for shadow runs", version)
        return model

    def let_go(self, why: str) -> None:
        """Unload the candidate held, if any."""
        if self.held is not None and self.held.model is not None:
            log.info("candidate model %s let go: %s", self.held.version, why)
        self.held = None

    def failed(self, version: str, what: str, exc: Exception) -> None:
        self.held = _Held(version, None, time.monotonic())
        if version in self.reported:
            return
        self.reported.add(version)
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        log.error(
            "candidate model %s %s (%s: %s): no shadow runs of it in this process; the photos "
            "are classified and filed as without it",
            version,
            what,
            type(exc).__name__,
            first_line,
        )


@dataclass(frozen=True)
class Registered:
    """Which candidate is registered, as a batch started: its version (None when none is),
    or why it could not be read (``error``), which skips the batch's shadow run and nothing
    else."""

    version: str | None
    error: str | None = None


def registered_candidate(session: Session) -> Registered:
    """Which candidate is registered, read in ``session`` with the batch's other reads (one
    session for them all); never raises: a shadow run must not fail its batch. The last
    read of the session: on PostgreSQL a statement that failed leaves nothing else to read
    in its transaction."""
    try:
        entry = crud.candidate_model(session)
    except Exception as exc:
        return Registered(None, str(exc))
    return Registered(entry.version if entry is not None else None)


@dataclass(frozen=True)
class Classified:
    """One photo of a batch the serving model classified: its stored result, where its file
    was and went, and its decoded input."""

    result: ItemResult
    source: Path
    tensor: object


def shadow(
    batch: list[Classified],
    clf,
    serving_seconds: float,
    settings: Settings,
    sessions: sessionmaker[Session],
    decoders: Executor,
    slot: CandidateSlot,
    load: Loader,
    registered: Registered,
) -> int:
    """Run the ``registered`` candidate, if any, on the photos of ``batch`` chosen for it and
    store its answers; return how many were stored. ``slot`` holds this process's candidate;
    ``load(settings, version)`` loads a model from the store, as the serving one is loaded.
    Never raises: the batch is filed already, and a shadow run must not fail it."""
    try:
        return _shadow(
            batch, clf, serving_seconds, settings, sessions, decoders, slot, load, registered
        )
    except Exception as exc:  # a bug of its own must not fail the batch either
        log.error(
            "shadow run failed (%s: %s); the batch is filed as without it", type(exc).__name__, exc
        )
        return 0


def _shadow(
    batch: list[Classified],
    clf,
    serving_seconds: float,
    settings: Settings,
    sessions: sessionmaker[Session],
    decoders: Executor,
    slot: CandidateSlot,
    load: Loader,
    registered: Registered,
) -> int:
    if registered.error is not None:
        log.warning(
            "shadow run skipped: cannot read which candidate is registered: %s", registered.error
        )
        return 0
    version = registered.version
    if version is None or version == clf.version:
        slot.let_go("no candidate is registered")
        return 0
    chosen = [
        (photo, p)
        for photo in batch
        if (
            p := shadow_probability(
                photo.result.content_hash,
                settings.shadow_rate,
                needs_review=photo.result.needs_review,
                audited=photo.result.audited,
            )
        )
        is not None
    ]
    if not chosen or (candidate := slot.get(settings, version, load)) is None:
        return 0
    try:
        with sessions() as session:
            threshold = review_threshold_in_force(
                session,
                settings,
                model_version=version,
                model_threshold=candidate.review_threshold,
            ).value
    except Exception as exc:
        log.warning("shadow run skipped: cannot read the candidate's review threshold: %s", exc)
        return 0
    try:
        inputs = _inputs(chosen, clf, candidate, decoders)
        started = time.perf_counter()
        answers = candidate.predict_tensors([x for _, _, x in inputs], threshold) if inputs else []
        seconds = (time.perf_counter() - started) / max(1, len(inputs))
    except Exception as exc:
        slot.failed(version, "failed in its forward pass", exc)
        return 0
    rows = [
        ShadowAnswer(
            photo.result.content_hash,
            a.main,
            a.main_confidence,
            a.sub,
            a.sub_confidence,
            a.needs_review,
            p,
        )
        for (photo, p, _), a in zip(inputs, answers, strict=True)
    ]
    try:
        with sessions.begin() as session:
            written = crud.record_shadow(
                session,
                serving_version=clf.version,
                candidate_version=version,
                answers=rows,
                review_threshold=threshold,
                candidate_seconds=seconds,
                serving_seconds=serving_seconds,
            )
    except Exception as exc:
        log.warning("shadow run of candidate %s not stored: %s", version, exc)
        return 0
    log.info("shadow run of candidate model %s: %d photos", version, written)
    return written


def _inputs(chosen: list, clf, candidate, decoders: Executor) -> list:
    """(photo, shadow probability, the candidate's input) for each chosen photo it can be
    given: the batch's decoded image when the candidate takes the serving model's input
    (``EvalPreset``), else the filed file decoded again for the candidate (a file gone
    meanwhile, or changed, is left out)."""
    if candidate.preset == clf.preset:
        return [(photo, p, photo.tensor) for photo, p in chosen]
    tensors = decoders.map(lambda pair: _decode_again(pair[0], candidate), chosen)
    return [(photo, p, x) for (photo, p), x in zip(chosen, tensors, strict=True) if x is not None]


def _decode_again(photo: Classified, candidate):
    """The candidate's input for a filed photo, read where its row says it went (or where it
    was, if its move failed); None if neither holds its bytes."""
    for path in (photo.result.final_path, photo.source):
        try:
            data = Path(path).read_bytes()
        except OSError:
            continue
        if sha256_bytes(data) == photo.result.content_hash:
            try:
                return candidate.preset(open_rgb(data, min_size=candidate.checkpoint.image_size))
            except UnreadableImage:
                return None
    return None


def load_candidate_at_start(settings: Settings, slot: CandidateSlot, load: Loader) -> None:
    """Load the registered candidate, if any, as a worker process starts (after its serving
    model), so that its first batch does not wait for it; a candidate that cannot be loaded
    is logged as a batch would log it."""
    try:
        with session_factory(settings.database_url)() as session:
            entry = crud.candidate_model(session)
    except Exception as exc:
        log.warning("cannot read which candidate is registered (%s): the first batch asks", exc)
        return
    if entry is not None:
        slot.get(settings, entry.version, load)
