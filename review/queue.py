"""What the review desk reads: the photos to decide that nobody has decided yet (those
flagged for review and those drawn for the blind audit), most doubtful first or newest night
first, with the filters the page offers; who holds a photo. Read-only; ``crud`` writes (and
takes the claims)."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Float, Select, Subquery, and_, case, cast, exists, func, or_, select
from sqlalchemy.orm import Session

from models import ItemStatus, Prediction, Review, ReviewClaim, SweepRun

DOUBT = "doubt"  # the smallest margin between the two best sub categories first
NIGHT = "night"  # newest night first, in the order the night found them
ORDERS = (DOUBT, NIGHT)


@dataclass(frozen=True)
class Selection:
    """The page's filters: one night (sweep run) and one predicted main or main/sub, and the
    order. A filter by predicted category leaves the audit photos out: it would tell what the
    model said of them."""

    sweep: int | None = None
    main: str | None = None
    sub: str | None = None
    order: str = DOUBT


@dataclass(frozen=True)
class NightBacklog:
    """One night's photos for the desk to decide (flagged or drawn for the audit), and how
    many of them nobody has decided yet."""

    sweep: int
    started_at: datetime
    flagged: int  # photos flagged for review that night
    audits: int  # confident photos drawn for the blind audit that night
    left: int  # of both, those nobody has decided yet


_reviewed = exists().where(Review.prediction_id == Prediction.id, Review.undone_at.is_(None))
_to_decide = and_(
    Prediction.status == ItemStatus.OK, or_(Prediction.needs_review, Prediction.audited)
)

# An audit photo is confident: by its own margin it would come after every flagged one. The
# flagged photos take their rank instead (0 the most doubtful, 1 the least), and each audit
# photo a place in [0, 1) drawn from its id, so that audits come at pseudo-random places among
# the doubtful photos, about their share of every stretch of the queue. The ranks are taken
# over every photo to decide of the nights that still have one left, decided or not, so that
# they hold while the queue shrinks: ranked over the photos left alone, the most doubtful one
# left would always rank 0, before every audit, and a team that never reached the end of the
# flagged photos would never be shown an audit.
_audit_place = cast((Prediction.id * 2654435761) % 100003, Float) / 100003
_flagged_rank = func.percent_rank().over(
    partition_by=Prediction.audited,
    order_by=(func.coalesce(Prediction.sub_margin, 0.0), Prediction.id),
)


def _held_by_another(reviewer: str, now: datetime):
    return exists().where(
        ReviewClaim.prediction_id == Prediction.id,
        ReviewClaim.reviewer != reviewer,
        ReviewClaim.expires_at > now,
    )


def _in_selection(query: Select, selection: Selection) -> Select:
    """``query`` (on Prediction) narrowed to the photos to decide the selection's filters
    leave, decided or not."""
    query = query.where(_to_decide)
    if selection.sweep is not None:
        query = query.where(Prediction.sweep_run_id == selection.sweep)
    if selection.main is not None:
        query = query.where(Prediction.main_category == selection.main, ~Prediction.audited)
    if selection.sub is not None:
        query = query.where(Prediction.sub_category == selection.sub)
    return query


def _to_review(selection: Selection) -> Select:
    return _in_selection(select(Prediction), selection).where(~_reviewed)


def _doubt_places(selection: Selection) -> Subquery:
    """(id, place) of the selection's photos to decide in the nights it has some left in:
    the doubt order's key, fixed while the photos are decided one by one."""
    # Not correlated with the query it sits in: the nights are this query's own.
    open_nights = _to_review(selection).with_only_columns(Prediction.sweep_run_id).correlate(None)
    place = case((Prediction.audited, _audit_place), else_=_flagged_rank)
    query = select(Prediction.id, place.label("place"))
    return (
        _in_selection(query, selection).where(Prediction.sweep_run_id.in_(open_nights)).subquery()
    )


def next_photo(
    session: Session,
    selection: Selection,
    *,
    reviewer: str,
    now: datetime,
    after: Prediction | None = None,
) -> Prediction | None:
    """The next photo for ``reviewer`` to decide, in the selection's order, leaving out those
    another reviewer's claim holds at ``now``. With ``after`` (a photo skipped), the one
    behind it, or the first again at the end."""
    left = _to_review(selection).where(~_held_by_another(reviewer, now))
    if selection.order == NIGHT:
        ranked = left.with_only_columns(
            Prediction.id.label("id"), (-Prediction.sweep_run_id).label("key")
        ).subquery()
    else:
        places = _doubt_places(selection)
        ranked = (
            left.join(places, places.c.id == Prediction.id)
            .with_only_columns(Prediction.id.label("id"), places.c.place.label("key"))
            .subquery()
        )
    query = (
        select(Prediction)
        .join(ranked, ranked.c.id == Prediction.id)
        .order_by(ranked.c.key, ranked.c.id)
    )
    if after is not None:
        at = session.scalar(select(ranked.c.key).where(ranked.c.id == after.id))
        if at is not None:
            behind = or_(ranked.c.key > at, and_(ranked.c.key == at, ranked.c.id > after.id))
            found = session.scalar(query.where(behind).limit(1))
            if found is not None:
                return found
    return session.scalar(query.limit(1))


def count_left(session: Session, selection: Selection) -> int:
    return session.scalar(select(func.count()).select_from(_to_review(selection).subquery()))


def nights(session: Session, last: int = 60) -> list[NightBacklog]:
    """The last nights with photos to decide (flagged or drawn for audit), newest first, with
    how many are left."""
    rows = session.execute(
        select(
            SweepRun.id,
            SweepRun.started_at,
            func.count(Prediction.id).filter(Prediction.needs_review),
            func.count(Prediction.id).filter(Prediction.audited),
            func.count(Prediction.id).filter(~_reviewed),
        )
        .join(Prediction, Prediction.sweep_run_id == SweepRun.id)
        .where(_to_decide)
        .group_by(SweepRun.id, SweepRun.started_at)
        .order_by(SweepRun.id.desc())
        .limit(last)
    )
    return [NightBacklog(*row) for row in rows]


def oldest_undecided(session: Session) -> Prediction | None:
    """The photo to decide (flagged or drawn for audit) classified longest ago that nobody
    has decided yet."""
    query = _to_review(Selection()).order_by(Prediction.classified_at, Prediction.id)
    return session.scalar(query.limit(1))


def claim_on(session: Session, prediction_id: int) -> ReviewClaim | None:
    return session.get(ReviewClaim, prediction_id, populate_existing=True)


def last_decision(session: Session, reviewer: str) -> tuple[Review, Prediction] | None:
    """The reviewer's newest decision not undone, and its photo: what the undo takes back."""
    row = session.execute(
        select(Review, Prediction)
        .join(Prediction, Prediction.id == Review.prediction_id)
        .where(Review.reviewer == reviewer, Review.undone_at.is_(None))
        .order_by(Review.id.desc())
        .limit(1)
    ).first()
    return None if row is None else (row[0], row[1])


def history(session: Session, prediction_id: int) -> list[Review]:
    """Every decision on one photo, newest first (the newest not undone counts)."""
    return list(
        session.scalars(
            select(Review).where(Review.prediction_id == prediction_id).order_by(Review.id.desc())
        )
    )


def recent_reviews(session: Session, last: int = 8) -> list[tuple[Review, Prediction]]:
    """The latest decisions, newest first, to go back to one and change it."""
    return list(
        session.execute(
            select(Review, Prediction)
            .join(Prediction, Prediction.id == Review.prediction_id)
            .order_by(Review.id.desc())
            .limit(last)
        ).all()
    )
