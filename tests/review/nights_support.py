"""Staged nights for the Nights pages: sweep rows and their photos written straight into the
database, so that every count, share and interval the pages show is known in advance."""

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
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
    margin: float | None = None  # between the two best subs: the doubt order's key
    at: float | None = None  # when classified, as a share of the night's duration


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
    known: int = 0,
) -> int:
    """One sweep run and its rows: ``photos`` classified evenly over ``duration``, one
    failed row per error in ``failed``, ``deferred`` and ``queued`` rows, and ``known``
    photos counted by the sweep alone. Returns the sweep's id."""
    finished = started_at + duration if status != SweepStatus.RUNNING else None
    run = SweepRun(
        status=status,
        trigger="beat",
        model_version=model_version,
        started_at=started_at,
        updated_at=finished or started_at,
        finished_at=None if status == SweepStatus.SKIPPED else finished,
        found=len(photos) + len(failed) + deferred + queued + known,
        enqueued=len(photos) + queued,
        succeeded=len(photos),
        failed=len(failed),
        known=known,
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
            sub_margin=p.margin,
            needs_review=p.flagged,
            audited=p.audited,
            classified_at=started_at + (step * i if p.at is None else duration * p.at),
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


# A month as it might go: the share of each (main, sub) among the returns, the errors a night
# meets, and the model's confidences; the last night brings a new supplier's shoes.
USUAL_MIX = {
    ("upperwear", "t-shirt"): 0.2,
    ("upperwear", "shirt"): 0.14,
    ("upperwear", "longsleeve"): 0.12,
    ("upperwear", "outwear"): 0.08,
    ("bottomwear", "pants"): 0.16,
    ("bottomwear", "shorts"): 0.07,
    ("bottomwear", "skirt"): 0.05,
    ("onepiece", "dress"): 0.07,
    ("footwear", "shoes"): 0.08,
    ("headwear", "hat"): 0.03,
}
SHOES_NIGHT = {k: v * 0.75 for k, v in USUAL_MIX.items()} | {("footwear", "shoes"): 0.31}
USUAL_ERRORS = (
    "corrupt or truncated image: image file is truncated (1372 bytes not processed)",
    "corrupt or truncated image: broken data stream when reading image file",
    "not an image (unrecognised content)",
    "empty file",
)
NEW_STATION = "not an image (unrecognised content)"  # a photo station saving HEIC


def month_photos(
    rng: np.random.Generator, n: int, mix: dict, *, threshold: float = 0.6, audit: float = 0.03
) -> list[Photo]:
    """``n`` photos drawn from ``mix``; flagged below ``threshold`` sub confidence; a share
    ``audit`` of the others drawn for the audit, each decided (right 92 times in 100)."""
    categories = list(mix)
    shares = np.array([mix[c] for c in categories])
    picked = rng.choice(len(categories), size=n, p=shares / shares.sum())
    subs = rng.beta(6, 1.6, size=n)
    at = np.sort(rng.beta(1.3, 1.8, size=n))
    photos = []
    for i in range(n):
        main, sub = categories[picked[i]]
        confidence = float(subs[i])
        flagged = confidence < threshold
        audited = not flagged and rng.random() < audit
        wrong = categories[(picked[i] + 1) % len(categories)]
        review = ((main, sub) if rng.random() < 0.92 else wrong) if audited else None
        photos.append(
            Photo(
                main,
                sub,
                main_confidence=min(1.0, confidence + 0.08),
                sub_confidence=confidence,
                flagged=flagged,
                audited=audited,
                review=review,
                at=float(at[i]),
            )
        )
    return photos


def stage_month(
    session: Session, last_started: datetime, model_version: str, seed: int = 7
) -> dict[str, int]:
    """Thirty nights, one a day up to ``last_started``: the sweep ids of the ``last`` night
    (its mix moved to shoes), the ``station`` night (a photo station's new format failed
    12% of its photos), an ``abandoned`` one and a ``skipped`` run."""
    rng = np.random.default_rng(seed)
    found = {}
    for k in range(29, -1, -1):
        started = last_started - timedelta(days=k)
        n = int(rng.integers(420, 620))
        errors = list(rng.choice(USUAL_ERRORS, size=int(rng.integers(0, 6))))
        status = SweepStatus.FINISHED
        if k == 8:
            errors += [NEW_STATION] * int(n * 0.14)
        if k == 19:
            status = SweepStatus.ABANDONED
        sweep = stage_night(
            session,
            started,
            status=status,
            duration=timedelta(minutes=float(rng.uniform(22, 34))),
            model_version=model_version,
            photos=month_photos(rng, n, SHOES_NIGHT if k == 0 else USUAL_MIX),
            failed=[str(e) for e in errors],
            deferred=int(rng.integers(0, 3)),
            queued=4 if status == SweepStatus.ABANDONED else 0,
            known=int(rng.integers(0, 12)),
        )
        found.update(
            {0: {"last": sweep}, 8: {"station": sweep}, 19: {"abandoned": sweep}}.get(k, {})
        )
        if k == 12:  # beat fired while a manual sweep ran
            found["skipped"] = stage_night(
                session, started + timedelta(minutes=5), status=SweepStatus.SKIPPED
            )
    return found
