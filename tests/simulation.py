"""Nights whose truth is known, fed to the real figures: the simulator behind
``bench/accuracy_simulation.py`` (the full table) and ``tests/test_statistics.py`` (a reduced one).

A night of ``photos`` photos: a ``flagged`` share of them flagged for review, the model right
on a flagged photo with probability ``flagged_right`` and on another with ``unflagged_right``;
a blind audit of the others at ``audit_rate``, of which ``undecided`` are left undecided;
every flagged photo decided. A window is ``nights`` such nights. The figures are those of
``review.accuracy.figures`` (the desk's Accuracy page, ``refund-sorter accuracy``, the night
pages, the metrics), the suggestion ``review.threshold.suggest``, fed the simulated counts;
the truth is the window's own photos' (the finite population the figures speak of).

Each table section is a function of (seed, windows) returning rows; add a section to
``SECTIONS`` to add it to the table.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import product

import numpy as np

from review.accuracy import Counts, figures
from review.threshold import GRID, Confidences, suggest

FIGURES = ("unflagged", "model", "filed")  # the intervals the pages and metrics show


@dataclass(frozen=True)
class Regime:
    photos: int  # a night's
    audit_rate: float
    flagged: float  # share of the photos flagged
    nights: int  # in the window
    flagged_right: float = 0.6
    unflagged_right: float = 0.93
    undecided: float = 0.1  # share of the audits left undecided

    def __str__(self) -> str:
        return (
            f"{self.nights:>2} x {self.photos:>5} photos, audit {self.audit_rate:.0%}, "
            f"flagged {self.flagged:.0%}, right {self.flagged_right:.0%}/"
            f"{self.unflagged_right:.1%}"
        )


def accuracy_regimes(*, quick: bool = False) -> list[Regime]:
    """Nights of 200, 600 and 5,000 photos, audit rates of 1, 2 and 5%, 5 and 30% flagged,
    windows of 1 and 28 nights, a typical model (60% right on the flagged photos, 93% on the
    others) and a very accurate one (80%, 99.5%). ``quick``: the corners, each flagged share
    with one model."""
    if quick:
        return [
            Regime(n, rate, share, window, f_right, u_right)
            for n, rate, window, (share, f_right, u_right) in product(
                (200, 5000), (0.01, 0.05), (1, 28), ((0.05, 0.6, 0.93), (0.3, 0.8, 0.995))
            )
        ]
    return [
        Regime(n, rate, share, window, f_right, u_right)
        for n, rate, share, window, (f_right, u_right) in product(
            (200, 600, 5000), (0.01, 0.02, 0.05), (0.05, 0.3), (1, 28), ((0.6, 0.93), (0.8, 0.995))
        )
    ]


def night(rng: np.random.Generator, regime: Regime) -> tuple[Counts, dict[str, float]]:
    """One night's counts and its true tallies (right of each stratum)."""
    flagged = int(rng.binomial(regime.photos, regime.flagged))
    others = regime.photos - flagged
    right_f = int(rng.binomial(flagged, regime.flagged_right))
    right_u = int(rng.binomial(others, regime.unflagged_right))
    audits = int(rng.binomial(others, regime.audit_rate))
    audits_right = int(rng.hypergeometric(right_u, others - right_u, audits)) if audits else 0
    decided = int(rng.binomial(audits, 1 - regime.undecided))
    decided_right = (
        int(rng.hypergeometric(audits_right, audits - audits_right, decided)) if decided else 0
    )
    counts = Counts(
        photos=regime.photos,
        flagged=flagged,
        flagged_decided=flagged,
        flagged_right_main=right_f,
        flagged_right_sub=right_f,
        audits=audits,
        audits_decided=decided,
        audits_right_main=decided_right,
        audits_right_sub=decided_right,
    )
    # As filed, every decided photo is right: the flagged ones and the decided audits.
    truth = {
        "others": others,
        "right_u": right_u,
        "right": right_f + right_u,
        "filed": flagged + right_u + (decided - decided_right),
    }
    return counts, truth


def window(rng: np.random.Generator, regime: Regime):
    """A window's figures (``review.accuracy.figures``) and its true accuracies."""
    nights = [night(rng, regime) for _ in range(regime.nights)]
    found = figures([(c, {}) for c, _ in nights])
    tally = {k: sum(t[k] for _, t in nights) for k in nights[0][1]}
    photos = regime.photos * regime.nights
    truth = {
        "unflagged": tally["right_u"] / tally["others"] if tally["others"] else None,
        "model": tally["right"] / photos,
        "filed": tally["filed"] / photos,
    }
    shown = {"unflagged": found.unflagged_sub, "model": found.model_sub, "filed": found.filed_sub}
    return shown, truth, found.counts


@dataclass
class Row:
    section: str
    regime: str
    windows: int
    # Mean labels the figures' uncertainty rests on: the decided audits (every flagged photo
    # is decided, so that stratum is known exactly); for the threshold, the labels above it.
    labels: float
    cells: dict[str, float | None]  # figure: share of the windows where it held the truth
    bounds: tuple[float, float | None]  # the share it must stay within (upper: None = no cap)


def coverage(regime: Regime, seed: int, windows: int) -> Row:
    """The share of ``windows`` simulated windows whose 95% intervals hold the truth."""
    rng = np.random.default_rng(seed)
    held = dict.fromkeys(FIGURES, 0)
    shown = dict.fromkeys(FIGURES, 0)
    labels = 0
    for _ in range(windows):
        estimates, truth, counts = window(rng, regime)
        labels += counts.audits_decided
        for name in FIGURES:
            e = estimates[name]
            if e.value is None or truth[name] is None:
                continue
            shown[name] += 1
            # Within rounding: a bound at 100% and a truth of all right are one number.
            held[name] += e.low - 1e-12 <= truth[name] <= e.high + 1e-12
    cells = {name: held[name] / shown[name] if shown[name] else None for name in FIGURES}
    mean = labels / windows
    return Row("coverage", str(regime), windows, mean, cells, (0.93, 0.98 if mean >= 30 else None))


def coverage_rows(seed: int, windows: int, *, quick: bool = False) -> Iterator[Row]:
    for i, regime in enumerate(accuracy_regimes(quick=quick)):
        yield coverage(regime, seed + i, windows)


# ------------------------------------------------------------------------ the threshold


@dataclass(frozen=True)
class ThresholdRegime:
    """Nights of a model whose sub confidence c is drawn from Beta(a, 1) and that is right
    with probability c (calibrated): flagged below ``in_force``."""

    photos: int
    audit_rate: float
    nights: int
    target: float = 0.95
    a: float = 8.0
    in_force: float = 0.7
    undecided: float = 0.1

    def __str__(self) -> str:
        return (
            f"{self.nights:>2} x {self.photos:>5} photos, audit {self.audit_rate:.0%}, "
            f"target {self.target:.0%}"
        )


def threshold_regimes(*, quick: bool = False) -> list[ThresholdRegime]:
    """Nights of 200, 600 and 5,000 photos, audit rates of 1, 2 and 5%, windows of 1 and 28
    nights, targets of 95 and 97% (``quick``: 28-night windows of 600 and 5,000 photos at 2
    and 5%, 95%)."""
    if quick:
        return [ThresholdRegime(n, rate, 28) for n, rate in product((600, 5000), (0.02, 0.05))]
    return [
        ThresholdRegime(n, rate, nights, target)
        for n, rate, nights, target in product(
            (200, 600, 5000), (0.01, 0.02, 0.05), (1, 28), (0.95, 0.97)
        )
    ]


def threshold_window(rng: np.random.Generator, regime: ThresholdRegime, min_labelled: int):
    """A window's strata as ``review.threshold.live_confidences`` reads them (each night's
    flagged and unflagged photos), every photo's confidence and rightness, and the
    suggestion."""
    n = regime.photos * regime.nights
    c = rng.beta(regime.a, 1.0, n)
    right = rng.random(n) < c
    flagged = c < regime.in_force
    audited = ~flagged & (rng.random(n) < regime.audit_rate)
    decided = flagged | (audited & (rng.random(n) >= regime.undecided))
    strata = []
    for night in range(regime.nights):
        at = slice(night * regime.photos, (night + 1) * regime.photos)
        for part, group in ((flagged[at], "flagged"), (~flagged[at], "unflagged")):
            cs, labelled, ok = c[at][part], decided[at][part], right[at][part]
            strata.append(Confidences(cs, cs[labelled], cs[labelled & ok], group))
    return strata, c, right, suggest(strata, regime.target, min_labelled=min_labelled)


def threshold(regime: ThresholdRegime, seed: int, windows: int, min_labelled: int) -> Row:
    """How often the suggestion holds: the share of the windows where the photos at or above
    the suggested threshold reach the target in truth, or where nothing is suggested (no
    wrong advice); beside it how often there is a suggestion, and how often it holds then."""
    rng = np.random.default_rng(seed)
    suggested = hit = labels = 0
    for _ in range(windows):
        _, c, right, found = threshold_window(rng, regime, min_labelled)
        if found.suggested is None:
            continue
        suggested += 1
        labels += found.suggested.accuracy.n
        hit += bool(right[c >= found.suggested.threshold].mean() >= regime.target)
    cells = {
        "holds": (windows - suggested + hit) / windows,
        "suggested": suggested / windows,
        "holds when suggested": hit / suggested if suggested else None,
    }
    mean = labels / suggested if suggested else 0.0
    return Row("threshold", str(regime), windows, mean, cells, (0.95, None))


def threshold_rows(seed: int, windows: int, *, quick: bool = False) -> Iterator[Row]:
    from refund_sorter.config import Settings

    # A quarter of the windows: each suggestion tries every threshold of the grid.
    minimum = Settings().threshold_min_labelled
    for i, regime in enumerate(threshold_regimes(quick=quick)):
        yield threshold(regime, seed + 1000 + i, max(1, windows // 4), minimum)


# Each section: (name, rows from (seed, windows, quick)). The gate's rows go here too.
SECTIONS: list[tuple[str, Callable[..., Iterator[Row]]]] = [
    ("coverage of the 95% intervals (unflagged, model, as filed)", coverage_rows),
    ("threshold suggestion: its photos reach the target", threshold_rows),
]


def within(row: Row, windows: int | None = None) -> list[str]:
    """The cells of ``row`` outside its bounds, allowing three standard errors of the
    simulation (of ``windows`` draws) around each bound."""
    low, high = row.bounds
    n = windows or row.windows
    bad = []
    for name, share in row.cells.items():
        if share is None or name in ("suggested", "holds when suggested"):
            continue
        slack_low = 3 * np.sqrt(low * (1 - low) / n)
        if share < low - slack_low:
            bad.append(f"{row.regime}: {name} {share:.3f} < {low}")
        if high is not None and share > high + 3 * np.sqrt(high * (1 - high) / n):
            bad.append(f"{row.regime}: {name} {share:.3f} > {high}")
    return bad


__all__ = ["GRID", "SECTIONS", "Regime", "Row", "within"]
