"""Staged nights for the comparison of a candidate with the serving model: a finished sweep
of the serving model's rows, the candidate's shadow rows and people's reviews, each written
the way the sweep, the shadow run and the desk write them (``refund_sorter.crud``)."""

import uuid
from dataclasses import dataclass, field

from models import ItemStatus, Prediction, SweepRun, SweepStatus, utcnow
from refund_sorter import crud
from refund_sorter.config import Settings
from refund_sorter.db import session_factory

SHIRT, JEANS = ("tops", "shirt"), ("bottoms", "jeans")


def _hash() -> str:
    return uuid.uuid4().hex * 2


@dataclass
class Photo:
    """One photo of a staged night: what the serving model said, what the candidate said
    (None: not shadowed), what a person decided (None: nobody did)."""

    serving: tuple[str, str]
    candidate: tuple[str, str] | None
    review: tuple[str, str] | None = None
    flagged: bool = False
    audited: bool = False
    chance: float = 1.0  # of being shadowed
    candidate_flagged: bool = False
    content_hash: str = field(default_factory=_hash)


def labelled(n: int, *, serving, candidate, truth, flagged=True) -> list[Photo]:
    """``n`` flagged (or audited) photos, all shadowed and decided as ``truth``."""
    return [
        Photo(serving, candidate, truth, flagged=flagged, audited=not flagged) for _ in range(n)
    ]


def stage_night(
    settings: Settings,
    *,
    serving: str,
    candidate: str,
    photos: list[Photo],
    seconds: tuple[float, float] = (0.01, 0.02),
) -> int:
    """A finished sweep of the serving model holding ``photos``; returns its id."""
    now = utcnow()
    with session_factory(settings.database_url).begin() as session:
        run = SweepRun(
            status=SweepStatus.FINISHED,
            trigger="manual",
            model_version=serving,
            started_at=now,
            updated_at=now,
            finished_at=now,
            found=len(photos),
            enqueued=len(photos),
            succeeded=len(photos),
        )
        session.add(run)
        session.flush()
        rows = []
        for i, p in enumerate(photos):
            rows.append(
                Prediction(
                    content_hash=p.content_hash,
                    model_version=serving,
                    sweep_run_id=run.id,
                    status=ItemStatus.OK,
                    file_name=f"photo-{run.id}-{i}.jpg",
                    original_path=f"/incoming/photo-{run.id}-{i}.jpg",
                    final_path=f"/processed/photo-{run.id}-{i}.jpg",
                    main_category=p.serving[0],
                    main_confidence=0.9,
                    sub_category=p.serving[1],
                    sub_confidence=0.4 if p.flagged else 0.9,
                    needs_review=p.flagged,
                    audited=p.audited,
                    audit_rate=0.02,
                    review_threshold=0.5,
                    classified_at=now,
                )
            )
        session.add_all(rows)
        session.flush()
        crud.record_shadow(
            session,
            serving_version=serving,
            candidate_version=candidate,
            answers=[
                crud.ShadowAnswer(
                    p.content_hash,
                    p.candidate[0],
                    0.8,
                    p.candidate[1],
                    0.3 if p.candidate_flagged else 0.8,
                    p.candidate_flagged,
                    p.chance,
                )
                for p in photos
                if p.candidate is not None
            ],
            review_threshold=0.5,
            serving_seconds=seconds[0],
            candidate_seconds=seconds[1],
        )
        for row, p in zip(rows, photos, strict=True):
            if p.review is not None:
                crud.record_review(
                    session,
                    prediction_id=row.id,
                    reviewer="anna",
                    main_category=p.review[0],
                    sub_category=p.review[1],
                    blind=p.audited,
                )
        return run.id


def worse_night(labelled_photos: int = 120, wrong: int = 30) -> list[Photo]:
    """A night on which the serving model is right on every labelled photo and the candidate
    wrong on ``wrong`` of them; plus confident photos, a tenth of them shadowed."""
    photos = labelled(wrong, serving=SHIRT, candidate=JEANS, truth=SHIRT)
    photos += labelled(labelled_photos - wrong - 20, serving=SHIRT, candidate=SHIRT, truth=SHIRT)
    photos += labelled(20, serving=JEANS, candidate=JEANS, truth=JEANS, flagged=False)
    photos += [Photo(SHIRT, SHIRT, chance=0.1) for _ in range(20)]
    photos += [Photo(SHIRT, None) for _ in range(180)]
    return photos


def better_night(labelled_photos: int = 120, right: int = 30) -> list[Photo]:
    """The other way round: the candidate right on ``right`` flagged photos the serving
    model had wrong, and as good on the other flagged photos and on 40 audits."""
    photos = labelled(right, serving=SHIRT, candidate=JEANS, truth=JEANS)
    photos += labelled(labelled_photos - right, serving=SHIRT, candidate=SHIRT, truth=SHIRT)
    photos += labelled(40, serving=SHIRT, candidate=SHIRT, truth=SHIRT, flagged=False)
    photos += [Photo(SHIRT, SHIRT, chance=0.1) for _ in range(20)]
    return photos
