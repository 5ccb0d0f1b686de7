"""The review threshold suggested by live photos: the lowest at which the photos left
unflagged reach a target accuracy with confidence, measured as ``review.accuracy`` measures
it.

Every classified photo's sub confidence is known, so at a candidate threshold t the photos
that t would leave unflagged (confidence at least t) are known exactly, night by night and in
each stratum (flagged and confident, as classified). Their accuracy is estimated from the
labelled photos among them: the decided audits of the confident stratum and the decided
photos of the flagged one, stratified as in ``review.accuracy`` (each night's part of each
stratum weighted by its size). A threshold below the one in force draws on the flagged
photos' reviews, which are a random sample only once a night's flagged photos are all
decided (the desk orders them by doubt); one above it draws on the audits alone.
A night's stratum with photos above a threshold and no labelled one among them takes the
estimate of the other nights' strata of its kind.

The suggestion is the lowest threshold whose lower 95% bound (not the point estimate)
reaches the target, judged only where at least ``REFUND_SORTER_THRESHOLD_MIN_LABELLED``
labelled photos lie at or above it, so that one or two labelled photos near 1.00 do not
decide it; it says how many labels it rests on.

It only suggests: the operator sets it for the model version (``refund-sorter threshold
--set``; the rule of which threshold is in force is ``refund_sorter.review_threshold``'s).
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Select, and_, select
from sqlalchemy.orm import Session

from models import ItemStatus, Prediction
from refund_sorter.crud import latest_reviews
from review.accuracy import Estimate, Stratum, stratified

GRID = tuple(round(0.01 * i, 2) for i in range(101))  # the thresholds tried


@dataclass
class Confidences:
    """One stratum of one night: the sub confidence of every photo, of the labelled ones
    (decided at random: audits, or flagged photos) and of those the model had right."""

    every: np.ndarray
    labelled: np.ndarray
    right: np.ndarray
    group: str = ""  # "flagged" or "unflagged": the nights' strata of one kind share it

    def above(self, t: float) -> Stratum:
        def count(values: np.ndarray) -> int:
            return int(len(values) - np.searchsorted(values, t, side="left"))

        return Stratum(count(self.every), count(self.labelled), count(self.right), self.group)


@dataclass(frozen=True)
class Point:
    threshold: float
    flagged_share: float  # of the photos, those below the threshold
    accuracy: Estimate  # of the photos at or above it (sub category)


@dataclass(frozen=True)
class Suggestion:
    target: float
    suggested: Point | None  # None: no threshold reaches the target with confidence
    curve: list[Point]
    min_labelled: int  # labelled photos a threshold needs above it to be judged


def suggest(strata: Sequence[Confidences], target: float, *, min_labelled: int) -> Suggestion:
    """The lowest threshold of GRID whose photos left unflagged reach ``target`` with
    confidence, the lower 95% bound of their accuracy at or above it, among the thresholds
    with at least ``min_labelled`` labelled photos above them; with the curve. A bound, not a
    point estimate, and a minimum of labels, so that one or two labelled photos near the top
    do not decide: going down the grid the labels above a threshold only grow, so its bound
    moves little from one threshold to the next."""
    strata = [
        Confidences(np.sort(s.every), np.sort(s.labelled), np.sort(s.right), s.group)
        for s in strata
    ]
    total = sum(len(s.every) for s in strata)
    curve = []
    for t in GRID:
        parts = [s.above(t) for s in strata]
        left = sum(p.size for p in parts)
        curve.append(Point(t, 1 - left / total if total else 0.0, stratified(parts, filed=False)))
    suggested = next(
        (
            p
            for p in curve
            if p.accuracy.value is not None
            and p.accuracy.n >= min_labelled
            and p.accuracy.low >= target
        ),
        None,
    )
    return Suggestion(target, suggested, curve, min_labelled)


def live_confidences(session: Session, *, model_version: str, sweeps: Select) -> list[Confidences]:
    """The strata of the photos of ``sweeps`` (a query of their ids) classified by
    ``model_version``: the threshold is kept per model, and another's photos say nothing
    about this one's confidences."""
    review = latest_reviews()
    right = and_(
        review.c.main_category == Prediction.main_category,
        review.c.sub_category == Prediction.sub_category,
    )
    rows = session.execute(
        select(
            Prediction.sweep_run_id,
            Prediction.needs_review,
            Prediction.audited,
            Prediction.sub_confidence,
            review.c.prediction_id.is_not(None),
            right,
        )
        .outerjoin(review, review.c.prediction_id == Prediction.id)
        .where(
            Prediction.status == ItemStatus.OK,
            Prediction.model_version == model_version,
            Prediction.sweep_run_id.in_(sweeps.scalar_subquery()),
        )
    )
    found: dict[tuple[int, bool], tuple[list, list, list]] = defaultdict(lambda: ([], [], []))
    for sweep, flagged, audited, confidence, decided, was_right in rows:
        every, labelled, correct = found[(sweep, bool(flagged))]
        every.append(confidence)
        if decided and (flagged or audited):
            labelled.append(confidence)
            if was_right:
                correct.append(confidence)
    return [
        Confidences(
            *(np.array(v, dtype=float) for v in lists), "flagged" if flagged else "unflagged"
        )
        for (_, flagged), lists in found.items()
    ]
