"""The statistics every figure uses, on ``scipy.stats`` where it has the method.

- the promotion gate's paired difference: how much less often a candidate model is right
  than the serving model over the photos the nights file, from the labelled photos both
  answered, stratified, with a one-sided upper bound (``paired_difference``).
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.stats import norm

# The promotion gate: paired differences

PAIRED_DIFFERENCE = (
    "stratified difference of paired proportions, each stratum weighted by its photos, "
    "one-sided bound with half a photo added to each of its four cells (Agresti-Min)"
)


@dataclass(frozen=True)
class PairedStratum:
    """One stratum's paired tallies: its size and its labelled photos on which the models
    disagree about being right."""

    photos: int  # the stratum's photos: its weight
    labelled: int  # labelled photos both models answered
    serving_only: int  # of which the serving model alone had right
    candidate_only: int  # of which the candidate alone had right


@dataclass(frozen=True)
class Difference:
    """Serving accuracy minus candidate accuracy over the strata's photos: positive when the
    candidate is worse. ``upper`` is the one-sided upper confidence bound."""

    value: float | None  # the point estimate, from the counts as they are
    upper: float | None
    standard_error: float | None
    labelled: int
    confidence: float
    method: str = PAIRED_DIFFERENCE


def paired_difference(strata: Iterable[PairedStratum], confidence: float = 0.95) -> Difference:
    """The difference over the strata, each weighted by its photos, and its one-sided upper
    ``confidence`` bound; None without a photo.

    In each stratum half a photo is added to each of the four cells (both right, serving
    only, candidate only, both wrong) before the Wald bound is taken (Agresti and Min, 2005):
    with few or no discordant photos the plain Wald bound has a standard error of 0 and
    claims certainty; the added half photos keep it honest, and fade as labels accumulate.
    A stratum with photos and no label is thus unknown, between -1/2 and 1/2 wide, by its
    weight: it widens the bound rather than being left out. The strata's variances add,
    each by its weight squared."""
    strata = [s for s in strata if s.photos > 0]
    total = sum(s.photos for s in strata)
    if not total:
        return Difference(None, None, None, 0, confidence)
    value = centre = variance = 0.0
    for s in strata:
        weight = s.photos / total
        if s.labelled:
            value += weight * (s.serving_only - s.candidate_only) / s.labelled
        b, c, n = s.serving_only + 0.5, s.candidate_only + 0.5, s.labelled + 2
        centre += weight * (b - c) / n
        variance += weight**2 * ((b + c) - (b - c) ** 2 / n) / n**2
    error = math.sqrt(variance)
    upper = centre + float(norm.ppf(confidence)) * error
    labelled = sum(s.labelled for s in strata)
    return Difference(value, min(1.0, upper), error, labelled, confidence)
