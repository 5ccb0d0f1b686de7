"""How far the team got: each reviewer's decisions today (a day in REFUND_SORTER_TIMEZONE)
and what is left. Read-only, like ``queue``."""

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from itertools import pairwise
from statistics import median
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Prediction, Review
from refund_sorter.crud import as_utc


@dataclass(frozen=True)
class ReviewerDay:
    """One reviewer's decisions of the day that still count (undone ones do not)."""

    reviewer: str
    decided: int
    corrected: int  # of which chose another category than the model's
    median_seconds: float | None  # between one decision and the reviewer's next; None: < 2

    @property
    def corrected_share(self) -> float:
        return self.corrected / self.decided


def day_bounds(zone: ZoneInfo, now: datetime) -> tuple[datetime, datetime]:
    """The day ``now`` falls on in ``zone``, as UTC start (inclusive) and end (exclusive)."""
    day = now.astimezone(zone).date()
    start = datetime.combine(day, time.min, tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def reviewers_on(session: Session, start: datetime, end: datetime) -> list[ReviewerDay]:
    """Every reviewer who decided a photo between ``start`` and ``end``, most decisions first.
    The time per photo is the median gap between consecutive decisions of the same reviewer,
    so a break (or the first photo of the day) weighs no more than one slow photo."""
    rows = session.execute(
        select(
            Review.reviewer,
            Review.reviewed_at,
            Review.main_category,
            Review.sub_category,
            Prediction.main_category,
            Prediction.sub_category,
        )
        .join(Prediction, Prediction.id == Review.prediction_id)
        .where(Review.undone_at.is_(None), Review.reviewed_at >= start, Review.reviewed_at < end)
        .order_by(Review.reviewer, Review.id)
    )
    times: dict[str, list[datetime]] = {}
    corrected: dict[str, int] = {}
    for reviewer, at, main, sub, model_main, model_sub in rows:
        times.setdefault(reviewer, []).append(as_utc(at))
        corrected[reviewer] = corrected.get(reviewer, 0) + ((main, sub) != (model_main, model_sub))
    days = []
    for reviewer, moments in times.items():
        gaps = [(b - a).total_seconds() for a, b in pairwise(moments)]
        days.append(
            ReviewerDay(reviewer, len(moments), corrected[reviewer], median(gaps) if gaps else None)
        )
    return sorted(days, key=lambda d: (-d.decided, d.reviewer))


def how_long(seconds: float) -> str:
    """A duration as a person says it: 45 min, 3 h 20 min, 2 days 4 h."""
    minutes = int(seconds // 60)
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days} day{'s' if days > 1 else ''} {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"
