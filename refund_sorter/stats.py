"""The statistics every figure uses, on ``scipy.stats`` where it has the method.

- the promotion gate's paired difference: how much less often a candidate model is right
  than the serving model over the photos the nights file, from the labelled photos both
  answered, stratified, with a one-sided upper bound (``paired_difference``, on Tango's
  score bound).
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.stats import norm

# The promotion gate: paired differences

PAIRED_DIFFERENCE = (
    "stratified difference of paired proportions, each stratum weighted by its photos: "
    "Tango's score bound per stratum with half a photo added to each cell, combined over "
    "the strata by MOVER"
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
    labelled: int
    confidence: float
    method: str = PAIRED_DIFFERENCE


def paired_upper(serving_only: float, candidate_only: float, n: float, z: float) -> float:
    """Tango's score bound (1998): the largest difference d = P(serving only) - P(candidate
    only) that the counts do not reject one-sided at ``z``, the nuisance probability fitted
    under each d. Unlike the Wald bound it follows the skew of few discordant photos."""
    b, c = serving_only, candidate_only
    if n <= 0:
        return 1.0

    def score(d: float) -> float:
        a, bb, cc = 2 * n, -b - c + (2 * n - b + c) * d, -c * d * (1 - d)
        candidate = (math.sqrt(max(bb * bb - 4 * a * cc, 0.0)) - bb) / (2 * a)
        variance = n * (2 * candidate + d * (1 - d))
        return (b - c - n * d) / math.sqrt(variance) + z if variance > 0 else -math.inf

    low, high = (b - c) / n, 1 - 1e-12
    if score(high) >= 0:
        return 1.0
    if score(low) <= 0:
        return low
    return float(brentq(score, low, high, xtol=1e-10))


def paired_difference(strata: Iterable[PairedStratum], confidence: float = 0.95) -> Difference:
    """The difference over the strata, each weighted by its photos, and its one-sided upper
    ``confidence`` bound; None without a photo.

    In each stratum half a photo is added to each of the four cells (both right, serving
    only, candidate only, both wrong), and the bound is Tango's score bound on those counts:
    with few or no discordant photos neither claims certainty, and the added half photos
    fade as labels accumulate. A stratum with photos and no label is thus unknown, its
    bound wide, by its weight: it widens the bound rather than being left out. The strata's
    bounds are combined by MOVER (Zou and Donner, 2008): the weighted point plus the root
    of the weighted squares of each stratum's distance from its point to its bound.
    Checked by simulation (bench/gate_simulation.py): at least about 95% coverage from 30
    to 5,000 labels, with few or many discordant photos."""
    strata = [s for s in strata if s.photos > 0]
    total = sum(s.photos for s in strata)
    if not total:
        return Difference(None, None, 0, confidence)
    z = float(norm.ppf(confidence))
    value = centre = spread = 0.0
    for s in strata:
        weight = s.photos / total
        if s.labelled:
            value += weight * (s.serving_only - s.candidate_only) / s.labelled
        b, c, n = s.serving_only + 0.5, s.candidate_only + 0.5, s.labelled + 2
        point = (b - c) / n
        centre += weight * point
        spread += (weight * (paired_upper(b, c, n, z) - point)) ** 2
    upper = min(1.0, centre + math.sqrt(spread))
    return Difference(value, upper, sum(s.labelled for s in strata), confidence)
