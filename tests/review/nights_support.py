"""Staged nights for the Nights pages: sweep rows and their photos written straight into the
database, so that every count, share and interval the pages show is known in advance."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.orm import Session

from models import ItemStatus, Prediction, Review, SweepRun, SweepStatus


@dataclass(frozen=True)
class Photo:
    """One classified photo; ``review``: the (main, sub) a reviewer decided, if any."""

    main: str
    sub: str
    main_confidence: float = 0.9
    sub_confidence: float = 0.8
    flagged: bool = False
    audited: bool = False
    review: tuple[str, str] | None = None


def stage_night(
    session: Session,
    started_at: datetime,
    *,
    status: str = SweepStatus.FINISHED,
    duration: timedelta = timedelta(minutes=10),
    model_version: str = "staged-model-1",
    photos: list[Photo] = (),
    failed: list[str] = (),
    deferred: int = 0,
    queued: int = 0,
    skipped: int = 0,
) -> int:
    """One sweep run and its rows: ``photos`` classified evenly over ``duration``, one
    failed row per error in ``failed``, ``deferred`` and ``queued`` rows, and ``skipped``
    photos counted by the sweep alone. Returns the sweep's id."""
    finished = started_at + duration if status != SweepStatus.RUNNING else None
    run = SweepRun(
        status=status,
        trigger="beat",
        model_version=model_version,
        started_at=started_at,
        updated_at=finished or started_at,
        finished_at=None if status == SweepStatus.SKIPPED else finished,
        found=len(photos) + len(failed) + deferred + queued + skipped,
        enqueued=len(photos) + queued,
        succeeded=len(photos),
        failed=len(failed),
        skipped=skipped,
        deferred=deferred,
        pending=queued,
    )
    session.add(run)
    session.flush()
    step = duration / max(1, len(photos))

    def row(i: int, status: str, **values) -> dict:
        return {
            "content_hash": f"{run.id:04d}-{status}-{i:06d}",
            "model_version": model_version,
            "sweep_run_id": run.id,
            "status": status,
            "file_name": f"{status}-{i:04d}.jpg",
            "original_path": f"/data/incoming/{status}-{i:04d}.jpg",
            "created_at": started_at,
            **values,
        }

    rows = [
        row(
            i,
            ItemStatus.OK,
            main_category=p.main,
            sub_category=p.sub,
            main_confidence=p.main_confidence,
            sub_confidence=p.sub_confidence,
            needs_review=p.flagged,
            audited=p.audited,
            classified_at=started_at + step * i,
        )
        for i, p in enumerate(photos)
    ]
    rows += [
        row(i, ItemStatus.FAILED, error=error, classified_at=started_at)
        for i, error in enumerate(failed)
    ]
    rows += [
        row(i, ItemStatus.DEFERRED, error="corrupt or truncated image: still being written")
        for i in range(deferred)
    ]
    rows += [row(i, ItemStatus.QUEUED) for i in range(queued)]
    if rows:
        ids = session.scalars(
            insert(Prediction).returning(Prediction.id, sort_by_parameter_order=True), rows
        ).all()
        reviews = [
            {
                "prediction_id": ids[i],
                "reviewer": "anna",
                "main_category": p.review[0],
                "sub_category": p.review[1],
                "reviewed_at": finished or started_at,
            }
            for i, p in enumerate(photos)
            if p.review
        ]
        if reviews:
            session.execute(insert(Review), reviews)
    return run.id
