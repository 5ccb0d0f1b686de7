"""The promotion gate on simulated nights whose truth is known, run by hand (never in CI):

    python bench/gate_simulation.py [--windows 2000] [--seed 0]

A serving model right on 60% of the photos it flags and 95% of the others; a candidate
whose accuracy over the population is ``difference`` below it (the same in both strata),
with correlated errors: on half the photos the candidate has the serving model's outcome,
on the others its own (drawn so that its accuracy is as said). Nights of 200, 600 and 5,000
photos, 5% to 30% of them flagged, 90% of the flagged reviewed (seen) and 90% of the audits
decided (blind) at audit rates of 1%, 2% and 5%. For each regime, windows of 1 and 28
nights and the window that holds ``REFUND_SORTER_GATE_MIN_LABELLED``'s default of blind
labels: how often the real gate (``registry.gate.gate``, on ``paired_from_strata``) passes
an equal and a better candidate and refuses one 2 points worse. First, the coverage of the
bound itself on 30 to 5,000 labels with few to many discordant photos, and the blind labels
at which an equal candidate passes 95% of the time (the default minimum). The output and the command
are recorded in docs/operating.md ("The promotion gate by simulation").
``tests/registry/test_gate_simulation.py`` runs a reduced version with fixed seeds.
"""

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refund_sorter.config import GATE_MIN_LABELLED
from registry.gate import Live, StratumPair, gate, paired_from_strata

SERVING = {True: 0.60, False: 0.95}  # right on the flagged photos, on the others
SAME_OUTCOME = 0.5  # the share of photos on which the candidate has the serving model's outcome
REVIEWED = 0.9  # of the flagged photos
DECIDED = 0.9  # of the audits
MARGIN = 0.01
NIGHT_PHOTOS = (200, 600, 5000)
AUDIT_RATES = (0.01, 0.02, 0.05)
FLAGGED_SHARES = (0.05, 0.15, 0.30)
DIFFERENCES = {"equal": 0.0, "better": -0.02, "2 points worse": 0.02}


@dataclass(frozen=True)
class Regime:
    night_photos: int
    audit_rate: float
    flagged_share: float
    nights: int
    blind_flagged_share: float = 0.0


def cells(serving: float, candidate: float, same: float = SAME_OUTCOME) -> list[float]:
    """The chances of (both right, serving only, candidate only, both wrong) on one photo,
    the candidate having the serving model's outcome on a share ``same`` of the photos."""
    own = (candidate - same * serving) / (1 - same)
    assert 0 <= own <= 1, (serving, candidate)
    both = serving * (same + (1 - same) * own)
    serving_only = serving * (1 - same) * (1 - own)
    candidate_only = (1 - serving) * (1 - same) * own
    return [both, serving_only, candidate_only, 1 - both - serving_only - candidate_only]


def window(rng: np.random.Generator, regime: Regime, difference: float):
    """One window's paired figures on the sub level, as the gate reads them: the nights'
    flagged and unflagged strata pooled (``paired_strata`` pools them so too)."""
    photos = regime.night_photos * regime.nights
    flagged = int(rng.binomial(photos, regime.flagged_share))
    audits = int(rng.binomial(photos - flagged, regime.audit_rate))
    labelled = {
        True: int(rng.binomial(flagged, REVIEWED)),
        False: int(rng.binomial(audits, DECIDED)),
    }
    strata = []
    for is_flagged, size in ((True, flagged), (False, photos - flagged)):
        n = labelled[is_flagged]
        a = SERVING[is_flagged]
        both, s_only, c_only, _ = rng.multinomial(n, cells(a, a - difference))
        blind = n if not is_flagged else int(rng.binomial(n, regime.blind_flagged_share))
        strata.append(
            StratumPair(
                0, is_flagged, size, n, int(both + s_only), int(both + c_only), int(c_only),
                int(s_only), blind,
            )
        )  # fmt: skip
    paired = paired_from_strata(strata, "sub")
    return Live(paired, paired, regime.nights)


def passed_share(
    rng: np.random.Generator, regime: Regime, difference: float, windows: int, min_labelled: int
) -> tuple[float, float]:
    """How often the gate passes the candidate, and the mean of the blind labels."""
    passed = blind = 0
    for _ in range(windows):
        live = window(rng, regime, difference)
        passed += gate(live, None, margin=MARGIN, min_labelled=min_labelled).passed
        blind += live.main.blind_unflagged
    return passed / windows, blind / windows


def covered_share(
    rng: np.random.Generator, labels: int, same: float, difference: float, windows: int
) -> float:
    """How often the one-sided 95% upper bound of the difference is at or above the true
    difference, on ``labels`` photos of one stratum (a folder, or the audits alone), the
    serving model right on 95%: few discordant photos when ``same`` is near 1."""
    chances = cells(0.95, 0.95 - difference, same)
    covered = 0
    for _ in range(windows):
        _, s_only, c_only, _ = rng.multinomial(labels, chances)
        strata = [StratumPair(0, False, labels, labels, 0, 0, int(c_only), int(s_only), labels)]
        covered += paired_from_strata(strata, "sub").difference.upper >= difference
    return covered / windows


def coverage(windows: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = [
        "coverage of the one-sided 95% upper bound (at least 95% wanted), one stratum, "
        "serving 95% right; same = share of photos with the serving model's outcome",
        f"{'labels':>7} {'same':>5} {'discordant':>10} {'equal':>6} {'2 worse':>8}",
    ]
    for labels in (30, 100, 300, 1000, 5000):
        for same in (0.5, 0.8, 0.9):
            equal = covered_share(rng, labels, same, 0.0, windows)
            worse = covered_share(rng, labels, same, 0.02, windows)
            discordant = labels * sum(cells(0.95, 0.95, same)[1:3])
            lines.append(f"{labels:>7} {same:>5} {discordant:>10.1f} {equal:>6.1%} {worse:>8.1%}")
    return lines


def nights_for(regime: Regime, blind: int) -> int:
    """The fewest nights whose decided audits reach ``blind`` in nearly every window: their
    expected number three standard deviations above it."""
    per_night = regime.night_photos * (1 - regime.flagged_share) * regime.audit_rate * DECIDED
    return max(1, math.ceil((blind + 3 * math.sqrt(blind)) / per_night))


def table(windows: int, seed: int, min_labelled: int) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = [
        f"margin {MARGIN}, minimum {min_labelled} blind labels, {windows} windows a cell; "
        "pass rates of an equal / a 2-point-better candidate, refusal rate of a 2-point-worse",
        f"{'night':>6} {'audit':>6} {'flagged':>8} {'window':>14} {'blind':>7} "
        f"{'equal':>6} {'better':>6} {'worse':>6}",
    ]
    for photos in NIGHT_PHOTOS:
        for rate in AUDIT_RATES:
            for share in FLAGGED_SHARES:
                base = Regime(photos, rate, share, 1)
                for nights in (1, 28, nights_for(base, min_labelled)):
                    regime = Regime(photos, rate, share, nights)
                    equal, blind = passed_share(rng, regime, 0.0, windows, min_labelled)
                    better, _ = passed_share(rng, regime, -0.02, windows, min_labelled)
                    worse, _ = passed_share(rng, regime, 0.02, windows, min_labelled)
                    lines.append(
                        f"{photos:>6} {rate:>6.0%} {share:>8.0%} {nights:>8} nights "
                        f"{blind:>7.0f} {equal:>6.1%} {better:>6.1%} {1 - worse:>6.1%}"
                    )
    return lines


def needed(windows: int, seed: int) -> list[str]:
    """The blind labels at which an equal candidate passes 95% of the time, flagged shares
    5% to 30% (the least flagged needs the most: its unflagged stratum weighs the most)."""
    rng = np.random.default_rng(seed)
    lines = ["blind labels -> pass rate of an equal candidate (2,000-photo nights, 2% audits)"]
    for share in FLAGGED_SHARES:
        for blind in (1000, 2000, 3000, 4000, 5000, 6000):
            regime = Regime(2000, 0.02, share, nights_for(Regime(2000, 0.02, share, 1), blind))
            equal, got = passed_share(rng, regime, 0.0, windows, 1)
            lines.append(f"  flagged {share:>4.0%}: {got:>6.0f} blind labels: {equal:.1%}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2000, help="Windows a cell.")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the simulation.")
    parser.add_argument(
        "--min-labelled", type=int, default=GATE_MIN_LABELLED, help="The gate's minimum."
    )
    args = parser.parse_args()
    for line in coverage(args.windows, args.seed + 2):
        print(line)
    print()
    for line in needed(args.windows, args.seed):
        print(line)
    print()
    for line in table(args.windows, args.seed + 1, args.min_labelled):
        print(line)


if __name__ == "__main__":
    main()
