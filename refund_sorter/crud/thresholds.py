"""Review thresholds set per model version by an operator."""

import logging

from sqlalchemy import delete
from sqlalchemy.orm import Session

from models import ReviewThreshold, utcnow
from refund_sorter.crud.common import upsert

log = logging.getLogger(__name__)


def review_threshold_set(session: Session, *, model_version: str) -> ReviewThreshold | None:
    """The review threshold set for ``model_version`` (``refund-sorter threshold --set``),
    or None: one query by primary key, cheap enough for every batch."""
    return session.get(ReviewThreshold, model_version)


def set_review_threshold(
    session: Session, *, model_version: str, threshold: float, set_by: str
) -> ReviewThreshold:
    """Set ``model_version``'s review threshold, in place of any it had, in the caller's
    transaction: one insert-or-update, so two operators setting it at once leave one row."""
    table = ReviewThreshold.__table__
    statement = upsert(session, table).values(
        model_version=model_version, threshold=threshold, set_by=set_by, set_at=utcnow()
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c.model_version],
            set_={c: statement.excluded[c] for c in ("threshold", "set_by", "set_at")},
        )
    )
    log.info("review threshold of model %s set to %s by %s", model_version, threshold, set_by)
    return session.get(ReviewThreshold, model_version, populate_existing=True)


def clear_review_threshold(session: Session, *, model_version: str, cleared_by: str) -> None:
    """Remove the review threshold set for ``model_version``, in the caller's transaction."""
    session.execute(delete(ReviewThreshold).where(ReviewThreshold.model_version == model_version))
    log.info("review threshold of model %s cleared by %s", model_version, cleared_by)
