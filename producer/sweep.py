"""One sweep: lock, scan, record, move what is settled, hand the rest to the workers."""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update
from tqdm import tqdm

from classifier.version import model_version
from models import ItemStatus, Prediction, SweepRun, SweepStatus, utcnow
from producer.scan import Found, inspect, list_files
from refund_sorter.config import Settings
from refund_sorter.crud import begin_sweep, live_predictions
from refund_sorter.db import session_factory
from refund_sorter.errors import UserError
from refund_sorter.export import export_sweep
from refund_sorter.files import destination, move

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """What a task carries: where the image is and what it should contain, never its bytes."""

    path: str
    content_hash: str
    model_version: str

    def as_args(self) -> list[str]:
        return [self.path, self.content_hash, self.model_version]


Dispatch = Callable[[list[WorkItem]], None]


@dataclass
class SweepReport:
    run: SweepRun
    enqueued: list[WorkItem] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def current_model_version(settings: Settings) -> str:
    path = Path(settings.model_path)
    if not path.is_file():
        raise UserError(f"model file not found: {path} (set REFUND_SORTER_MODEL_PATH)")
    return model_version(path)


def run_sweep(
    settings: Settings, dispatch: Dispatch, trigger: str, progress: bool = False
) -> SweepReport:
    """Scan ``incoming/``, record every file, and dispatch one work item per new image.

    Files that are not images are recorded as failed and moved to ``failed/``; images this
    model already classified are counted as skipped and moved to ``processed/``. Each move
    happens only after the row saying so is committed.
    """
    sessions = session_factory(settings.database_url)
    version = current_model_version(settings)
    run = begin_sweep(sessions, trigger, version, timedelta(hours=settings.sweep_stale_hours))
    if run.status == SweepStatus.SKIPPED:
        log.warning("sweep %s skipped: %s", run.id, run.message)
        return SweepReport(run)

    try:
        paths = list_files(settings.incoming_dir)
        found = [
            inspect(p)
            for p in tqdm(paths, desc="scanning", unit="file", disable=not progress, leave=False)
        ]
        report, moves = _record(sessions, run.id, found, settings, version)
        for path, dest in moves:
            try:
                move(path, dest)
            except OSError as exc:  # the row is committed; the next sweep moves it again
                log.error("could not move %s to %s: %s", path, dest, exc)
        if report.run.status == SweepStatus.FINISHED:
            with sessions() as session:
                export_sweep(session, run.id, settings.export_dir)
        if report.enqueued:
            dispatch(report.enqueued)
    except BaseException as exc:
        # Leave no sweep "running" that nothing will finish: the next one picks up its items.
        with sessions.begin() as session:
            session.execute(
                update(SweepRun)
                .where(SweepRun.id == run.id, SweepRun.status == SweepStatus.RUNNING)
                .values(
                    status=SweepStatus.ABANDONED,
                    finished_at=utcnow(),
                    message=f"stopped early: {exc}"[:2000],
                )
            )
        raise
    return report


def _record(sessions, run_id: int, found: list[Found], settings: Settings, version: str):
    now = utcnow()
    moves: list[tuple[Path, Path]] = []
    enqueued: list[WorkItem] = []
    failed: list[tuple[Path, str]] = []
    skipped = 0
    with sessions.begin() as session:
        images = {f.content_hash for f in found if f.error is None}
        live = live_predictions(session, images, version)
        seen: set[str] = set()
        for f in found:
            if f.error is not None:  # not an image: every such file keeps its own row
                dest = destination(
                    f.path, settings.incoming_dir, settings.failed_dir, f.content_hash
                )
                session.add(
                    Prediction(
                        content_hash=f.content_hash,
                        model_version=version,
                        sweep_run_id=run_id,
                        status=ItemStatus.FAILED,
                        file_name=f.path.name,
                        original_path=str(f.path),
                        final_path=str(dest),
                        error=f.error,
                        created_at=now,
                        classified_at=now,
                    )
                )
                moves.append((f.path, dest))
                failed.append((f.path, f.error))
                continue
            if f.content_hash in seen:  # same bytes twice tonight: the copy waits a night
                skipped += 1
                continue
            seen.add(f.content_hash)
            row = live.get(f.content_hash)
            if row is not None and row.status == ItemStatus.OK:
                skipped += 1  # already classified by this model: file it with the others
                moves.append(
                    (
                        f.path,
                        destination(
                            f.path, settings.incoming_dir, settings.processed_dir, f.content_hash
                        ),
                    )
                )
                continue
            if row is None:  # a new image, or a retry of one that failed
                row = Prediction(
                    content_hash=f.content_hash, model_version=version, status=ItemStatus.QUEUED
                )
                session.add(row)
            # else: still queued by an abandoned sweep, re-enqueued by this one
            row.sweep_run_id, row.created_at = run_id, now
            row.file_name, row.original_path = f.path.name, str(f.path)
            enqueued.append(WorkItem(str(f.path), f.content_hash, version))
        run = session.get(SweepRun, run_id)
        run.found, run.enqueued, run.failed, run.skipped = (
            len(found),
            len(enqueued),
            len(failed),
            skipped,
        )
        run.pending = len(enqueued)
        run.updated_at = now
        if not enqueued:
            run.status, run.finished_at = SweepStatus.FINISHED, now
    return SweepReport(run, enqueued, failed), moves
