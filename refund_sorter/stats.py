"""The statistics every figure of the project uses: proportions with their 95% intervals, the
stratified accuracy over strata of photos, and the exact tests, on ``scipy.stats``.

A proportion of integer counts gets the exact (Clopper-Pearson) interval under ``SMALL``
trials and Wilson's score interval from there. The stratified estimate (``stratified``) takes
strata of (photos, labelled, right): each stratum weighted by its photos, its variance the
finite-population one, and its interval the exact one at the effective sample size under
``SMALL`` (Korn and Graubard's), Wilson's from there; ``docs/operating.md`` shows by
simulation why. The promotion gate's paired difference (``paired_difference``): how much
less often a candidate model is right than the serving model over the photos the nights
file, stratified, with a one-sided upper bound on Tango's score bound. Torch-free and
database-free, so that the registry's gate can call it.
"""

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from scipy import stats
from scipy.optimize import brentq

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
Z = float(stats.norm.ppf(1 - ALPHA / 2))  # 1.96: the normal quantile of a 95% interval
SMALL = 30  # below this many labels (or effective labels) the exact interval


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson's score interval for ``k`` successes in ``n`` trials."""
    ci = stats.binomtest(int(k), int(n)).proportion_ci(CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval for ``k`` successes in ``n`` trials."""
    ci = stats.binomtest(int(k), int(n)).proportion_ci(CONFIDENCE, method="exact")
    return float(ci.low), float(ci.high)


def mcnemar(serving_only: int, candidate_only: int) -> tuple[float, float]:
    """McNemar's exact test of two models on the same photos, each photo counting alike:
    of the photos exactly one model had right, ``candidate_only`` were the candidate's.
    Returns (two-sided p that both are as good, one-sided p that the candidate is no
    better); 1.0 for both when no photo tells them apart."""
    n = serving_only + candidate_only
    if n == 0:
        return 1.0, 1.0
    two = stats.binomtest(candidate_only, n, 0.5).pvalue
    one = stats.binomtest(candidate_only, n, 0.5, alternative="greater").pvalue
    return float(two), float(one)


def binomial_interval(k: int, n: int) -> tuple[float, float, str]:
    """``k`` of ``n``'s interval and its method: exact under SMALL trials, else Wilson's."""
    if n < SMALL:
        return *clopper_pearson(k, n), "clopper-pearson"
    return *wilson(k, n), "wilson"


def stratified_point(strata: Iterable[tuple[float, int, int]]) -> float | None:
    """The accuracy over strata of (photos N_h, labelled n_h, right k_h), each weighted by
    its photos; a stratum without a labelled photo is left out. None without any. The value
    of ``stratified`` when every stratum is a group of its own, to the last bit."""
    known = [(size, n, k) for size, n, k in strata if n and size]
    total = sum(size for size, _, _ in known)
    if not total:
        return None
    value = 0.0
    for size, n, k in known:
        value += size / total * (k / n)
    return value


@dataclass(frozen=True)
class Stratified:
    """A stratified accuracy: its value (over the groups with a labelled photo), its 95%
    interval (groups without one counted anywhere from 0 to 1), the labels it rests on and
    the share of the photos in groups nobody labelled."""

    value: float | None
    low: float | None
    high: float | None
    labelled: int
    unknown: float  # share of the photos in groups without a label: their accuracy unknown


def effective_interval(value: float, effective: float) -> tuple[float, float]:
    """A 95% interval for a proportion ``value`` measured on ``effective`` (fractional)
    trials: under SMALL, or at 0 or 1, Korn and Graubard's exact one (Clopper-Pearson at the
    effective size, from scipy's Beta quantiles); else Wilson's score interval at the effective
    size, written out because scipy's takes integer counts. The bound at 0 or 1 when the
    value is there; never a bound on the wrong side of the value."""
    x = value * effective
    # At 0 or 1 too: Wilson's bound there sits below the exact one (1 - 3.84/n against
    # 1 - 3.69/n at n right of n).
    if effective < SMALL or value in (0, 1):
        low = stats.beta.ppf(ALPHA / 2, x, effective - x + 1) if value > 0 else 0.0
        high = stats.beta.ppf(1 - ALPHA / 2, x + 1, effective - x) if value < 1 else 1.0
    else:
        z2 = Z * Z / effective
        centre = (value + z2 / 2) / (1 + z2)
        half = Z / (1 + z2) * math.sqrt(value * (1 - value) / effective + z2 / (4 * effective))
        low, high = centre - half, centre + half
    return float(max(0.0, min(low, value))), float(min(1.0, max(high, value)))


def stratified(strata: Iterable[tuple[float, int, int, str]], *, filed: bool = False) -> Stratified:
    """The accuracy over strata of (photos N_h, labelled n_h, right k_h, group), each stratum
    weighted by its photos; ``filed``: as filed after review, a labelled photo counting as
    right (a person decided it).

    The labelled photos of a stratum are a random sample of it. Within a group (every night's
    unflagged photos, say) the strata share an accuracy closely enough that a handful of
    audits a night estimate it better together: a stratum of a group without a labelled
    photo takes the group's estimate (its strata collapsed), and the variance of each
    stratum, the finite-population W_h^2 (1 - n_h/N_h) p(1-p) / n_h, takes the group's
    pooled p, smoothed as Jeffreys' (k + 1/2) / (n + 1) so that it stays above zero at 0 or
    n right. Each group's accuracy gets ``effective_interval`` at its effective sample size
    p(1-p)/V (Kish), and the groups' intervals are combined by recovering their variances
    from their bounds (Zou and Donner's MOVER), which keeps the skew of a proportion near
    100%. A group with photos and no labelled one widens the interval by its weight, its
    accuracy anywhere from 0 to 1; the value is then over the others alone."""
    groups: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    for size, n, k, group in strata:
        if size > 0:
            groups[group].append((float(size), int(n), int(k)))
    total = math.fsum(size for g in groups.values() for size, _, _ in g)
    parts, unknown_photos, labelled, known_photos = [], 0.0, 0, 0.0
    for members in groups.values():
        photos = math.fsum(size for size, _, _ in members)
        known = [(size, n, k) for size, n, k in members if n]
        if not known:
            unknown_photos += photos
            continue
        labelled += sum(n for _, n, _ in known)
        known_photos += photos
        decided = math.fsum(min(size, n) for size, n, _ in members) if filed else 0.0
        rest = photos - decided  # the photos whose accuracy is estimated
        # Each known stratum's share of the estimated photos: its undecided ones as filed.
        weight = [size - min(size, n) if filed else size for size, n, _ in known]
        if not math.fsum(weight):  # every known stratum decided: the others as they are
            weight = [size for size, _, _ in known]
        if len(known) == 1:
            q = known[0][2] / known[0][1]
        else:
            q = math.fsum(w * k / n for w, (_, n, k) in zip(weight, known, strict=True))
            q /= math.fsum(weight)
        pooled = _jeffreys(sum(n for _, n, _ in known), sum(k for _, _, k in known))
        var = (
            math.fsum(
                size**2 * max(0.0, 1 - n / size) * pooled * (1 - pooled) / n for size, n, _ in known
            )
            / math.fsum(weight) ** 2
        )
        if var == 0:
            low = high = q
        else:
            low, high = effective_interval(q, pooled * (1 - pooled) / var)
        parts.append((photos, decided, rest, q, low, high))
    if not parts:
        return Stratified(None, None, None, 0, 1.0 if total else 0.0)
    # Summed as stratified_point sums, so that the gate's value is the shown one to the bit;
    # the interval does not rest on the value being exactly 0 or 1 where every label is.
    value = 0.0
    for photos, decided, rest, q, _, _ in parts:
        value += photos / known_photos * ((decided + rest * q) / photos if filed else q)
    down = math.sqrt(math.fsum((rest * (q - low)) ** 2 for _, _, rest, q, low, _ in parts))
    up = math.sqrt(math.fsum((rest * (high - q)) ** 2 for _, _, rest, q, _, high in parts))
    low, high = max(0.0, value - down / known_photos), min(1.0, value + up / known_photos)
    unknown = unknown_photos / total
    if unknown:
        low, high = (1 - unknown) * low, (1 - unknown) * high + unknown
    return Stratified(value, low, high, labelled, unknown)


def _jeffreys(n: int, k: int) -> float:
    return (k + 0.5) / (n + 1)


# ------------------------------------------------------------------------------------------
# Paired differences (the promotion gate): the difference in accuracy between two models on
# the same labelled photos, and its one-sided upper bound.

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
    z = float(stats.norm.ppf(confidence))
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
