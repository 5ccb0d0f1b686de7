"""The review desk's decisions and claims: each decision a row of its own (undo marks it), and
who holds which photo for how long."""

from datetime import timedelta

from sqlalchemy import Subquery, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from models import ItemStatus, Prediction, Review, ReviewClaim, utcnow
from refund_sorter.crud.common import upsert


def record_review(
    session: Session,
    *,
    prediction_id: int,
    reviewer: str,
    main_category: str,
    sub_category: str,
    blind: bool,
) -> Review | None:
    """Record a reviewer's decision on a classified photo, in the caller's transaction; None
    when no classified row has this id. Earlier decisions stay as history: the newest one
    is the answer (``latest_reviews``). ``blind``: the desk showed the photo without the
    model's answer (``refund_sorter.audit.shown_blind``). The caller checks the category
    against the model's taxonomy."""
    prediction = session.get(Prediction, prediction_id)
    if prediction is None or prediction.status != ItemStatus.OK:
        return None
    review = Review(
        prediction_id=prediction_id,
        reviewer=reviewer,
        main_category=main_category,
        sub_category=sub_category,
        blind=blind,
        reviewed_at=utcnow(),
    )
    session.add(review)
    session.flush()
    return review


def undo_last_review(session: Session, *, reviewer: str) -> Review | None:
    """Take back ``reviewer``'s newest decision not yet undone, in the caller's transaction:
    the row stays, marked ``undone_at``, and no longer counts. None when there is none (or a
    concurrent undo took the same one: a double press undoes one decision, not two)."""
    newest = (
        select(func.max(Review.id))
        .where(Review.reviewer == reviewer, Review.undone_at.is_(None))
        .scalar_subquery()
    )
    undone = session.scalar(
        update(Review)
        .where(Review.id == newest, Review.undone_at.is_(None))
        .values(undone_at=utcnow())
        .returning(Review.id)
    )
    return None if undone is None else session.get(Review, undone)


def latest_reviews() -> Subquery:
    """The newest review not undone of each reviewed prediction (the answer that counts), to
    join on ``prediction_id``. Newest by id, which only grows, rather than by a clock."""
    # "No newer one", an anti-join along ix_reviews_prediction: a third of the time of
    # matching each review against its prediction's max(id), computed over every review.
    newer = aliased(Review)
    superseded = exists().where(
        newer.prediction_id == Review.prediction_id,
        newer.undone_at.is_(None),
        newer.id > Review.id,
    )
    return select(Review).where(Review.undone_at.is_(None), ~superseded).subquery("latest_review")


def claim_photo(
    session: Session, *, prediction_id: int, reviewer: str, seconds: float
) -> ReviewClaim | None:
    """Hold a photo for ``reviewer`` for ``seconds`` from now, in the caller's transaction:
    the claim, or None when another reviewer's claim on it still lives.

    One statement, an insert that on conflict updates only an expired claim or the
    reviewer's own: of two desk processes claiming the same photo at once, PostgreSQL makes
    the second wait for the first and then finds the claim live, so only one wins (SQLite
    runs one writer at a time)."""
    now = utcnow()
    claims = ReviewClaim.__table__
    statement = upsert(session, claims).values(
        prediction_id=prediction_id,
        reviewer=reviewer,
        claimed_at=now,
        expires_at=now + timedelta(seconds=seconds),
    )
    taken = session.execute(
        statement.on_conflict_do_update(
            index_elements=[claims.c.prediction_id],
            set_={
                "reviewer": statement.excluded.reviewer,
                "claimed_at": statement.excluded.claimed_at,
                "expires_at": statement.excluded.expires_at,
            },
            where=or_(claims.c.expires_at <= now, claims.c.reviewer == reviewer),
        ).returning(claims.c.prediction_id)
    ).scalar()
    if taken is None:
        return None
    return session.get(ReviewClaim, prediction_id, populate_existing=True)


def release_claims(session: Session, *, reviewer: str, keep: int | None = None) -> None:
    """Let go of ``reviewer``'s claims (but the one on ``keep``): a reviewer holds the photo
    the desk shows them, and no other."""
    query = delete(ReviewClaim).where(ReviewClaim.reviewer == reviewer)
    if keep is not None:
        query = query.where(ReviewClaim.prediction_id != keep)
    session.execute(query)
