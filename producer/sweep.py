"""One sweep: lock, scan, record, move what is settled, hand the rest to the workers; and
the stall check that hands a stalled sweep's images to the workers again."""

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from models import ItemStatus, Prediction, SweepRun, SweepStatus, utcnow
from producer.scan import Found, scan
from refund_sorter import crud
from refund_sorter.arrival import still_being_written
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.errors import UserError
from refund_sorter.export import export_sweeps
from refund_sorter.files import Folders
from refund_sorter.filing import Move, file_committed
from refund_sorter.images import sha256_file
from refund_sorter.messages import Dispatch, WorkItem
from registry.registry import (
    ensure_model_file,
    ensure_serving_model,
    model_path_disagreement,
    servable,
)

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    run: SweepRun
    enqueued: list[WorkItem] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    deferred: list[tuple[Path, str]] = field(default_factory=list)  # left for later, and why


def run_sweep(
    settings: Settings, dispatch: Dispatch, trigger: str, progress: bool = False
) -> SweepReport:
    """Scan ``incoming/``, record every file, and dispatch one work item per new image.

    Files that are not images are recorded as failed and moved to ``failed/``, unless they
    are still being written (``refund_sorter.arrival``): those are recorded as deferred and
    left for a later sweep. Images this model already classified are counted as known and
    moved to ``processed/``; a classified row whose file was left in ``incoming/`` (its move
    failed) is corrected to name where it goes now. Each move happens only after the row
    saying so is committed, and a move that fails leaves its row with no final path and the
    reason. A file whose bytes cannot be read is recorded as failed and left where it is, as
    is one that cannot be moved; later sweeps count such a file as known rather than
    record it again. What ``producer.scan`` leaves alone (links, vanished files, ...) is only
    logged. A sweep with nothing to classify is finished only after its moves, since
    finishing releases the lock.
    """
    sessions = session_factory(settings.database_url)
    # A new install's first model is stored and made to serve here; and the serving model's
    # file must be in the store before photos are enqueued for it (a promotion checks the
    # same of the model it makes serve).
    serving = ensure_serving_model(settings)
    ensure_model_file(settings, serving.version)
    if note := model_path_disagreement(settings, serving.version):
        log.warning(note)
    with sessions.begin() as session:
        stale = crud.abandon_sweeps(
            session,
            message="no progress for too long; the next sweep re-enqueues what is left",
            stale_before=utcnow() - timedelta(hours=settings.sweep_stale_hours),
        )
    _export_abandoned(settings, stale)
    try:
        # Which model serves is read only once the sweep holds the lock: a promotion waits
        # for a running sweep, and this sweep sees any promotion committed before it.
        run = crud.begin_sweep(sessions, trigger)
    except crud.NoServingModel as exc:
        raise UserError(str(exc)) from None
    version = run.model_version
    if run.status == SweepStatus.SKIPPED:
        log.warning("sweep %s skipped: %s", run.id, run.message)
        return SweepReport(run)

    try:
        found = scan(settings.incoming_dir, progress=progress).found
        with sessions.begin() as session:
            live = crud.live_predictions(
                session, {f.content_hash for f in found if f.error is None}, version
            )
            recorded = crud.failures_left_in_place(
                session, (f.path for f in found if f.error is not None)
            )
            at_counter = crud.counter_days_among(
                session,
                {r.sweep_run_id for r in live.values() if r.status == ItemStatus.QUEUED},
            )
            plan = _plan(found, live, recorded, settings, run.id, at_counter)
            run = crud.record_scan(
                session,
                sweep_id=run.id,
                model_version=version,
                found=len(found),
                unreadable=plan.unreadable,
                queue=plan.queue,
                live=live,
                known=plan.known,
                refiled=plan.refiled,
            )
        _log_plan(plan)
        # A sweep with nothing to classify finishes here, once its files are where its rows
        # say: finishing before the moves let the next sweep hash files being moved.
        file_committed(sessions, plan.moves, {run.id: 0}, settings.export_dir)
        with sessions() as session:
            run = crud.get_sweep(session, run.id)
        enqueued = [WorkItem(str(f.path), f.content_hash, version) for f in plan.queue]
        if enqueued:
            dispatch(enqueued)
    except BaseException as exc:
        # Leave no sweep "running" that nothing will finish: the next one picks up its items.
        with sessions.begin() as session:
            stopped = crud.abandon_sweeps(
                session, sweep_id=run.id, message=f"stopped early: {exc}"[:2000]
            )
        _export_abandoned(settings, stopped)
        raise
    return SweepReport(
        run,
        enqueued,
        failed=[(f.path, f.error) for f in plan.unreadable if f.status == ItemStatus.FAILED],
        deferred=[(f.path, f.error) for f in plan.unreadable if f.status == ItemStatus.DEFERRED],
    )


def _export_abandoned(settings: Settings, sweep_ids: list[int]) -> None:
    """An abandoned sweep gets its CSV too: what it did classify is reported that night."""
    if not sweep_ids:
        return
    for sweep_id in sweep_ids:
        log.warning("sweep %s abandoned; its queued images go to the next sweep", sweep_id)
    try:
        export_sweeps(session_factory(settings.database_url), sweep_ids, settings.export_dir)
    except Exception:
        log.exception("could not write the CSV of abandoned sweeps %s", sweep_ids)


def resume_stalled_sweep(
    settings: Settings, dispatch: Dispatch, queue_depth: Callable[[], int]
) -> int | None:
    """Publish the queued images of the running sweep again if it stalled: no progress for
    ``sweep_stall_seconds`` while nothing waits in the classify queue (``queue_depth``).

    Then no message is left for those rows: the broker restarted without its data, or a
    worker died holding them unacked (Redis hands them out again only after the visibility
    timeout). A copy that turns out to be a duplicate is harmless: a worker stores a result
    only while its row is queued, and ignores a message for a file already moved. Returns
    how many images were published again, or None if the sweep did not stall.
    """
    sessions = session_factory(settings.database_url)
    quiet_before = utcnow() - timedelta(seconds=settings.sweep_stall_seconds)
    with sessions() as session:
        run = crud.running_sweep(session)
    if run is None or crud.as_utc(run.updated_at) >= quiet_before:
        return None
    if not servable(settings, run.model_version):
        # No worker can load that model (the registry has no file for it): publishing its
        # images again would only repeat that. Released now rather than after the stale
        # delay, the next sweep takes its photos over for the serving model.
        with sessions.begin() as session:
            stopped = crud.abandon_sweeps(
                session,
                sweep_id=run.id,
                message=f"its model {run.model_version} has no file in the model store, so no "
                "worker can classify its photos; the next sweep takes them over",
            )
        _export_abandoned(settings, stopped)
        return None
    waiting = queue_depth()
    if waiting:
        log.info(
            "sweep %s made no progress for %.0f s; %d images wait in the queue for a worker",
            run.id,
            settings.sweep_stall_seconds,
            waiting,
        )
        return None
    with sessions.begin() as session:
        items = crud.claim_stalled_sweep(session, run.id, quiet_before)
    if items is None:  # progress meanwhile, or another check took it
        return None
    if not items:
        _settle(settings, sessions, run.id)
        return 0
    log.warning(
        "sweep %s made no progress for %.0f s and the classify queue is empty: "
        "publishing its %d queued images again",
        run.id,
        settings.sweep_stall_seconds,
        len(items),
    )
    if items:
        dispatch(items)
    return len(items)


def _settle(settings: Settings, sessions, sweep_id: int) -> None:
    """Finish a stalled sweep with nothing left queued: a process was stopped between
    committing a batch and moving its files, which stay counted as pending. Moves what it
    left in ``incoming/``, corrects the rows of what cannot be moved, and finishes the sweep
    with its CSV (``refund_sorter.filing``)."""
    with sessions() as session:
        rows = crud.unfiled_rows(session, sweep_id)
        pending = crud.get_sweep(session, sweep_id).pending
    moves = [
        Move(Path(original), Path(final), (sweep_id, original))
        for original, final in rows
        if not os.path.lexists(final)
    ]
    log.warning(
        "sweep %s made no progress for %.0f s with nothing left queued: filing the %d "
        "file(s) a stopped worker left and finishing it",
        sweep_id,
        settings.sweep_stall_seconds,
        len(moves),
    )
    file_committed(sessions, moves, {sweep_id: pending}, settings.export_dir)


@dataclass
class _Plan:
    unreadable: list[crud.Unreadable] = field(default_factory=list)
    queue: list[crud.ScannedFile] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    refiled: list[tuple[Prediction, Path]] = field(default_factory=list)
    known: int = 0  # found and left alone: known already
    failed_before: int = 0  # of known: failed in an earlier sweep and still left here


def _plan(
    found: list[Found],
    live: dict[str, Prediction],
    recorded: set[tuple[str, str]],
    settings: Settings,
    sweep_id: int,
    counter_days: set[int] = frozenset(),
) -> _Plan:
    """Decide each file's fate from what the table already holds (no SQL, no moves).

    ``recorded``: (path, content hash) of failed rows whose file was left where it was;
    ``counter_days``: the counter days among the sweeps of the ``live`` rows still queued.
    """
    plan = _Plan()
    seen: set[str] = set()
    now = time.time()
    folders = Folders.of(settings)
    for f in found:
        why = None  # why it is taken for a file still being written
        if f.error is not None and f.readable:  # not an image now; perhaps not yet
            why = still_being_written(
                f.modified, settings.settle_seconds, changed=f.changed, now=now
            )
        if f.error is not None and (str(f.path), f.content_hash) in recorded:
            # Recorded as failed by an earlier sweep and still here: one row is enough.
            plan.known += 1
            plan.failed_before += 1
        elif why:  # left where it is, untouched, for a later sweep
            error = f"{f.error}; {why}"
            plan.unreadable.append(
                crud.Unreadable(f.path, f.content_hash, error, None, ItemStatus.DEFERRED)
            )
        elif f.error is not None:  # every such upload keeps its own row
            dest = None
            if f.readable:  # not an image: to failed/; an unreadable file stays put
                dest = folders.failed_destination(f.path.resolve(), f.content_hash)
                plan.moves.append(Move(f.path, dest, (sweep_id, str(f.path))))
            plan.unreadable.append(crud.Unreadable(f.path, f.content_hash, f.error, dest))
        elif f.content_hash in seen:  # same bytes twice tonight: the copy waits a night
            plan.known += 1
        elif (row := live.get(f.content_hash)) is not None and row.status == ItemStatus.OK:
            plan.known += 1  # already classified by this model: file it with the others
            dest = folders.processed_destination(
                f.path.resolve(), f.content_hash, row.main_category, row.sub_category
            )
            names = None
            if not _holds(row.final_path, row.content_hash):
                # Its earlier move failed: the row names where the file goes now.
                plan.refiled.append((row, dest))
                names = (row.sweep_run_id, row.original_path)
            plan.moves.append(Move(f.path, dest, names))
        elif (row := live.get(f.content_hash)) is not None and row.sweep_run_id in counter_days:
            # The returns counter is classifying this content right now, for a client who
            # waits: its row is not taken over. The copy waits a night, as a duplicate does,
            # and the next sweep files it as known.
            plan.known += 1
        else:  # new, failed before, or still queued by an abandoned sweep
            plan.queue.append(crud.ScannedFile(f.path, f.content_hash))
        seen.add(f.content_hash)
    return plan


def _holds(path: str | None, content_hash: str) -> bool:
    """Whether ``path`` is a file with exactly this content: a classified row's final path
    must name its photo, not a file that took the name since."""
    try:
        return path is not None and sha256_file(path) == content_hash
    except OSError:
        return False


def _log_plan(plan: _Plan) -> None:
    for f in plan.unreadable:
        if f.status == ItemStatus.DEFERRED:
            log.info("left %s in incoming/ for later: %s", f.path, f.error)
        elif f.final_path is None:
            log.warning("recorded %s as failed: %s", f.path, f.error)
    if plan.failed_before:
        log.info(
            "%d file(s) recorded as failed by earlier sweeps are still in incoming/; left alone",
            plan.failed_before,
        )
