"""The figures people act on, proven on simulated nights (the reduced table of
``bench/accuracy_simulation.py``, fixed seeds) and on the reproductions that once read wrong."""

import numpy as np
import pytest
from simulation import SECTIONS, ThresholdRegime, threshold_window, within

from refund_sorter import stats
from review.accuracy import Counts, Stratum, figures, share, stratified
from review.threshold import Confidences, suggest

WINDOWS = 300  # a regime's simulated windows (the threshold's: a quarter)


@pytest.mark.parametrize("title, rows", SECTIONS, ids=[name for name, _ in SECTIONS])
def test_every_regime_of_the_reduced_table_is_inside_its_bounds(title, rows):
    found = list(rows(7, WINDOWS, quick=True))
    assert found
    bad = [problem for row in found for problem in within(row)]
    assert not bad, bad


def test_28_nights_of_right_audits_read_close_to_100_percent():
    night = Counts(
        photos=2000,
        flagged=150,
        flagged_decided=150,
        flagged_right_main=100,
        flagged_right_sub=90,
        audits=36,
        audits_decided=36,
        audits_right_main=36,
        audits_right_sub=36,
    )
    f = figures([(night, {}) for _ in range(28)])
    exact_low, _ = stats.clopper_pearson(28 * 36, 28 * 36)
    assert f.unflagged_sub.value == pytest.approx(1.0)
    assert f.unflagged_sub.high == 1.0
    assert f.unflagged_sub.low >= exact_low
    assert share(f.unflagged_sub).startswith("100.0% [99.")


def test_no_float_edge_collapses_an_interval():
    # Weights whose sum of right answers is 0.9999999999999999, not 1.
    strata = [Stratum(size, 5, 5, "unflagged") for size in (1, 2, 3, 7, 11, 13, 17, 19, 23)]
    e = stratified(strata, filed=False)
    assert e.value == pytest.approx(1.0)
    assert 0.5 < e.low < 0.99 and e.high == pytest.approx(1.0)


def test_an_undecided_stratum_shows_its_uncertainty():
    # One night: its 40 flagged photos decided (24 right), none of its 8 audits.
    night = Counts(
        photos=400,
        flagged=40,
        flagged_decided=40,
        flagged_right_main=24,
        flagged_right_sub=24,
        audits=8,
        audits_decided=0,
    )
    f = figures([(night, {})])
    model, filed = f.model_sub, f.filed_sub
    # 90% of the night nobody checked: its accuracy counted anywhere from 0 to 100%.
    assert model.low == pytest.approx(0.1 * 0.6) and model.high == pytest.approx(0.1 * 0.6 + 0.9)
    assert filed.low == pytest.approx(0.1) and filed.high == pytest.approx(1.0)
    assert "90.0% undecided counted 0-100%" in model.method
    assert "[6.0-96.0%]" in share(model)
    assert f.unflagged_sub.value is None


def test_a_night_without_decided_audits_in_a_window_takes_the_others_estimate():
    rng = np.random.default_rng(11)
    nights = []
    for _ in range(28):
        audits = int(rng.integers(3, 8))
        right = int(rng.binomial(audits, 0.93))
        nights.append(
            Counts(
                photos=300,
                flagged=30,
                flagged_decided=30,
                flagged_right_main=18,
                flagged_right_sub=18,
                audits=audits,
                audits_decided=audits,
                audits_right_main=right,
                audits_right_sub=right,
            )
        )
    before = figures([(c, {}) for c in nights]).model_sub
    nights[0].audits_decided = nights[0].audits_right_main = nights[0].audits_right_sub = 0
    after = figures([(c, {}) for c in nights]).model_sub
    assert after.method == "stratified"
    assert after.high - after.low == pytest.approx(before.high - before.low, rel=0.2)


def test_one_more_labelled_photo_moves_the_suggestion_by_at_most_one_step():
    rng = np.random.default_rng(3)
    regime = ThresholdRegime(5000, 0.02, 28)
    strata, _, _, found = threshold_window(rng, regime, 100)
    assert found.suggested is not None
    at = found.suggested.threshold
    night = strata[1]  # the first night's unflagged photos
    for c in np.round(np.arange(0.7, 1.0, 0.01), 2):
        for right in (True, False):
            more = Confidences(
                np.append(night.every, c),
                np.append(night.labelled, c),
                np.append(night.right, c) if right else night.right,
                night.group,
            )
            moved = suggest([more, *strata[:1], *strata[2:]], regime.target, min_labelled=100)
            assert moved.suggested is not None
            assert abs(moved.suggested.threshold - at) <= 0.01 + 1e-9, (c, right)


def test_mcnemar_matches_the_exact_binomial_test_and_keeps_its_size():
    two, one = stats.mcnemar(4, 12)  # the candidate alone right on 12 photos, the serving on 4

    assert two == pytest.approx(0.0768, abs=5e-4)
    assert one == pytest.approx(0.0384, abs=5e-4)
    assert stats.mcnemar(12, 4)[1] > 0.98  # a worse candidate is not "better" one-sided
    assert stats.mcnemar(0, 0) == (1.0, 1.0)
    # Two equally good models: 2,000 comparisons of 40 telling photos each. The exact test
    # rejects at 5% at most 5% of the time (fewer: the binomial is discrete).
    rng = np.random.default_rng(7)
    rejected = [stats.mcnemar(40 - k, k)[0] < 0.05 for k in rng.binomial(40, 0.5, 2000)]
    assert 0.02 < np.mean(rejected) <= 0.05
    # A candidate right on 70% of the telling photos is found better most of the time.
    found = [stats.mcnemar(60 - k, k)[1] < 0.05 for k in rng.binomial(60, 0.7, 2000)]
    assert np.mean(found) > 0.8
