"""A candidate model's answers from its shadow runs, stored beside the serving model's."""

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import ItemStatus, Prediction, ShadowPrediction, utcnow
from refund_sorter.crud.common import upsert


@dataclass(frozen=True)
class ShadowAnswer:
    """A candidate model's answer on one photo of a batch, and the chance the photo had of
    being shadowed (``refund_sorter.shadow``)."""

    content_hash: str
    main_category: str
    main_confidence: float
    sub_category: str
    sub_confidence: float
    needs_review: bool
    shadow_probability: float


def record_shadow(
    session: Session,
    *,
    serving_version: str,
    candidate_version: str,
    answers: list[ShadowAnswer],
    review_threshold: float,
    candidate_seconds: float,
    serving_seconds: float,
) -> int:
    """Store a shadow run's answers, in the caller's transaction (a batch's shadow run has
    its own, after the batch's): each one beside the serving model's ``ok`` row of its photo.
    A photo this candidate answered already (a redelivered task) keeps its first answer.
    Returns the rows written."""
    if not answers:
        return 0
    ids = dict(
        session.execute(
            select(Prediction.content_hash, Prediction.id).where(
                Prediction.model_version == serving_version,
                Prediction.status == ItemStatus.OK,
                # As the unique index's predicate, so the index serves the query.
                Prediction.status.not_in((ItemStatus.FAILED, ItemStatus.DEFERRED)),
                Prediction.content_hash.in_({a.content_hash for a in answers}),
            )
        ).all()
    )
    now = utcnow()
    rows = [
        {
            "prediction_id": ids[a.content_hash],
            "model_version": candidate_version,
            "main_category": a.main_category,
            "main_confidence": a.main_confidence,
            "sub_category": a.sub_category,
            "sub_confidence": a.sub_confidence,
            "needs_review": a.needs_review,
            "review_threshold": review_threshold,
            "shadow_probability": a.shadow_probability,
            "candidate_seconds": candidate_seconds,
            "serving_seconds": serving_seconds,
            "created_at": now,
        }
        for a in answers
        if a.content_hash in ids
    ]
    if not rows:
        return 0
    table = ShadowPrediction.__table__
    written = session.scalars(
        upsert(session, table)
        .values(rows)
        .on_conflict_do_nothing(index_elements=[table.c.prediction_id, table.c.model_version])
        .returning(table.c.id)
    )
    return len(written.all())
