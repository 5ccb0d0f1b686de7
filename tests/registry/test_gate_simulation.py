"""The promotion gate on simulated nights whose truth is known: the reduced version, with
fixed seeds, of ``bench/gate_simulation.py`` (whose full table is in docs/operating.md).

Once a window holds the minimum of blind labels, a candidate 2 points worse over the
population is refused, and an equal or a better one passes, at least 95% of the time: each
rate checked against 95% less three of its own standard errors, so that the check does not
fail by chance; below the minimum the gate passes nothing. The bound itself holds the true
difference about 95% of the time from 30 to 5,000 labels, with few discordant photos too."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from gate_simulation import (
    AUDIT_RATES,
    FLAGGED_SHARES,
    NIGHT_PHOTOS,
    Regime,
    covered_share,
    nights_for,
    passed_share,
)

from refund_sorter.config import GATE_MIN_LABELLED

WINDOWS = 300
FLOOR = 0.95 - 3 * math.sqrt(0.95 * 0.05 / WINDOWS)


@pytest.mark.parametrize("photos", NIGHT_PHOTOS)
def test_at_the_minimum_an_equal_or_better_candidate_passes_and_a_worse_one_is_refused(photos):
    rng = np.random.default_rng(photos)
    for rate in AUDIT_RATES:
        for share in FLAGGED_SHARES:
            nights = nights_for(Regime(photos, rate, share, 1), GATE_MIN_LABELLED)
            regime = Regime(photos, rate, share, nights)
            for difference in (0.0, -0.02, 0.02):
                passed, blind = passed_share(rng, regime, difference, WINDOWS, GATE_MIN_LABELLED)
                assert blind >= GATE_MIN_LABELLED, regime
                found = passed if difference <= 0 else 1 - passed
                assert found >= FLOOR, (regime, difference, found)


def test_below_the_minimum_nothing_passes_and_28_nights_of_2000_photos_are_too_few():
    rng = np.random.default_rng(1)
    regime = Regime(2000, 0.02, 0.10, 28)
    passed, blind = passed_share(rng, regime, -0.02, 50, GATE_MIN_LABELLED)
    assert passed == 0 and blind < GATE_MIN_LABELLED


@pytest.mark.parametrize("labels", (30, 100, 300, 1000, 5000))
def test_the_bound_holds_the_true_difference_with_few_or_many_discordant_photos(labels):
    rng = np.random.default_rng(labels)
    for same in (0.5, 0.9):
        for difference in (0.0, 0.02):
            found = covered_share(rng, labels, same, difference, WINDOWS)
            assert found >= FLOOR, (labels, same, difference, found)
