"""CSV export of the predictions table, streamed so a million rows use constant memory.

``write_csv`` is the one CSV writer: the per-sweep CSV and ``refund-sorter export`` both
go through it, so both are safe to open in a spreadsheet. ``export_sweeps`` writes the CSV of
the sweeps that ended: called where a night finishes, after its last files moved
(``refund_sorter.filing``), where one is abandoned, and where the stall check closes a day
of the returns counter (``producer.counter``).
"""

import csv
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TextIO

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, sessionmaker

from models import ItemStatus, Prediction, SweepRun, SweepStatus
from refund_sorter.atomic import atomic_write
from refund_sorter.crud import as_utc, latest_reviews

log = logging.getLogger(__name__)

COLUMNS = [
    "file_name",
    "content_hash",
    "status",
    "main_category",
    "main_confidence",
    "sub_category",
    "sub_confidence",
    "needs_review",
    # Drawn for the blind audit, and the audit rate and review threshold in force when it
    # was classified (empty for rows classified before they were recorded).
    "audited",
    "audit_rate",
    "review_threshold",
    "model_version",
    "sweep_run",
    "error",
    "classified_at",
    "original_path",
    "final_path",
    # The newest review, if a person looked at the photo (refund-sorter review-server).
    "reviewed_main_category",
    "reviewed_sub_category",
    "reviewed_by",
    "reviewed_at",
]


@dataclass
class ExportFilter:
    sweep_run: int | None = None
    since: date | None = None  # classified on or after this day (UTC)
    until: date | None = None  # classified on or before this day (UTC)
    status: str | None = None  # ok, failed or deferred; queued rows are never exported


def build_query(flt: ExportFilter) -> Select:
    review = latest_reviews()
    query = (
        select(
            Prediction,
            review.c.main_category,
            review.c.sub_category,
            review.c.reviewer,
            review.c.reviewed_at,
        )
        .outerjoin(review, review.c.prediction_id == Prediction.id)
        .where(Prediction.status != ItemStatus.QUEUED)
    )
    if flt.sweep_run is not None:
        query = query.where(Prediction.sweep_run_id == flt.sweep_run)
    if flt.since is not None:
        query = query.where(
            Prediction.classified_at >= datetime.combine(flt.since, time.min, tzinfo=UTC)
        )
    if flt.until is not None:
        end = datetime.combine(flt.until + timedelta(days=1), time.min, tzinfo=UTC)
        query = query.where(Prediction.classified_at < end)
    if flt.status is not None:
        query = query.where(Prediction.status == flt.status)
    return query.order_by(Prediction.id)


def _rows(session: Session, flt: ExportFilter) -> Iterator[list]:
    result = session.execute(build_query(flt).execution_options(yield_per=1000))
    for p, reviewed_main, reviewed_sub, reviewer, reviewed_at in result:
        classified, reviewed_at = as_utc(p.classified_at), as_utc(reviewed_at)
        yield [
            p.file_name,
            p.content_hash,
            p.status,
            p.main_category or "",
            "" if p.main_confidence is None else f"{p.main_confidence:.4f}",
            p.sub_category or "",
            "" if p.sub_confidence is None else f"{p.sub_confidence:.4f}",
            "true" if p.needs_review else "false",
            "true" if p.audited else "false",
            "" if p.audit_rate is None else f"{p.audit_rate:.4f}",
            "" if p.review_threshold is None else f"{p.review_threshold:.4f}",
            p.model_version,
            p.sweep_run_id,
            p.error or "",
            classified.isoformat(timespec="seconds") if classified else "",
            p.original_path,
            p.final_path or "",
            reviewed_main or "",
            reviewed_sub or "",
            reviewer or "",
            reviewed_at.isoformat(timespec="seconds") if reviewed_at else "",
        ]
        session.expunge(p)  # keep the identity map from growing with the export


# A spreadsheet runs a cell that starts with one of these as a formula, and file names
# come from whoever uploads the photos (`=HYPERLINK(...).jpg`): OWASP's "CSV injection".
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(cell):
    """A text cell that starts like a formula, behind a single quote so a spreadsheet shows
    it as text (drop the quote to get the value back). Other cells are left as they are:
    confidences are non-negative numbers and never start with one of these characters."""
    if isinstance(cell, str) and cell.startswith(FORMULA_START):
        return "'" + cell
    return cell


def write_csv(session: Session, flt: ExportFilter, out: TextIO) -> int:
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    n = 0
    for row in _rows(session, flt):
        writer.writerow([formula_safe(cell) for cell in row])
        n += 1
    return n


def sweep_csv_path(run: SweepRun, export_dir: Path) -> Path:
    """``<export_dir>/sweep-<date>-<run>.csv``: no night overwrites another. A day of the
    returns counter's photos: ``counter-<date>-<run>.csv`` beside them."""
    day = as_utc(run.started_at).date().isoformat()
    kind = "counter" if run.status == SweepStatus.COUNTER else "sweep"
    return Path(export_dir) / f"{kind}-{day}-{run.id:05d}.csv"


def export_sweep(session: Session, sweep_id: int, export_dir: Path) -> Path:
    """Write the CSV of one sweep (atomically: a reader never sees half a file)."""
    path = sweep_csv_path(session.get(SweepRun, sweep_id), export_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", newline="", encoding="utf-8") as fh:
        write_csv(session, ExportFilter(sweep_run=sweep_id), fh)
    return path


def export_sweeps(
    sessions: sessionmaker[Session], sweep_ids: Iterable[int], export_dir: Path
) -> None:
    """Write the CSV of each sweep that has just ended (finished or abandoned). Called after
    the moves that followed its last commit, and after the corrections of the rows whose file
    could not be moved, so the CSV says where each file is."""
    sweep_ids = list(sweep_ids)
    if not sweep_ids:
        return
    with sessions() as session:
        for sweep_id in sweep_ids:
            path = export_sweep(session, sweep_id, export_dir)
            log.info("sweep %s ended; CSV %s", sweep_id, path)
