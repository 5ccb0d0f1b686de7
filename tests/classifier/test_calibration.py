"""classifier/calibration.py: confidences an operator can take at their word, and the review
threshold that keeps only photos right often enough."""

import numpy as np
import pytest
import torch

from classifier.calibration import (
    Outcomes,
    choose_review_threshold,
    coverage_table,
    expected_calibration_error,
    fit_temperature,
    outcomes,
    reliability_bins,
)
from classifier.predict import joint_probabilities

# 3 main categories with 2, 3 and 2 sub categories
SUB_TO_MAIN = torch.tensor([0, 0, 1, 1, 1, 2, 2])


def honest_logits(n: int, seed: int):
    """Logits and sub labels drawn from the very probabilities the logits give: a model
    calibrated by construction."""
    gen = torch.Generator().manual_seed(seed)
    main_logits = torch.randn(n, 3, generator=gen) * 1.5
    sub_logits = torch.randn(n, 7, generator=gen) * 1.5
    joint = joint_probabilities(main_logits, sub_logits, SUB_TO_MAIN)
    labels = torch.multinomial(joint, 1, generator=gen).squeeze(1)
    return main_logits, sub_logits, labels


def test_the_fitted_temperature_undoes_overconfidence_and_finds_the_factor():
    main_logits, sub_logits, labels = honest_logits(20_000, seed=0)
    # The same model made overconfident: every logit five times as large.
    main5, sub5 = main_logits * 5, sub_logits * 5

    temperature = fit_temperature(main5, sub5, labels, SUB_TO_MAIN)

    assert temperature == pytest.approx(5.0, rel=0.05)
    raw = outcomes(main5, sub5, labels, SUB_TO_MAIN, 3)
    scaled = outcomes(main5, sub5, labels, SUB_TO_MAIN, 3, temperature)
    for level in ("sub", "main"):
        conf, correct = f"{level}_confidence", f"{level}_correct"
        before = expected_calibration_error(getattr(raw, conf), getattr(raw, correct))
        after = expected_calibration_error(getattr(scaled, conf), getattr(scaled, correct))
        assert before > 0.15, level  # badly overconfident
        assert after < 0.02, level
        assert after < before / 8, level
    # Scaling confidences never changes a decision.
    assert np.array_equal(raw.sub_pred, scaled.sub_pred)
    assert np.array_equal(raw.main_pred, scaled.main_pred)


def test_an_honest_model_keeps_a_temperature_near_one():
    main_logits, sub_logits, labels = honest_logits(20_000, seed=1)

    assert fit_temperature(main_logits, sub_logits, labels, SUB_TO_MAIN) == pytest.approx(
        1.0, abs=0.05
    )


def test_an_underconfident_model_gets_a_temperature_below_one():
    main_logits, sub_logits, labels = honest_logits(20_000, seed=2)

    temperature = fit_temperature(main_logits / 2, sub_logits / 2, labels, SUB_TO_MAIN)

    assert temperature == pytest.approx(0.5, rel=0.05)


def test_no_images_keep_temperature_one():
    empty = torch.empty(0, 3), torch.empty(0, 7), torch.empty(0, dtype=torch.long)

    assert fit_temperature(*empty, SUB_TO_MAIN) == 1.0


# --- the expected calibration error, by hand ------------------------------------------------


def test_ece_weighs_each_bins_gap_by_its_share_of_images():
    conf = np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = np.array([True, True, True, False, True, True])

    # Bin (0.933, 1.0]: 4 images, confidence 0.95, accuracy 0.75. Bin (0.533, 0.6]: 2
    # images, confidence 0.55, accuracy 1.0.
    expected = 4 / 6 * abs(0.75 - 0.95) + 2 / 6 * abs(1.0 - 0.55)
    assert expected_calibration_error(conf, correct) == pytest.approx(expected)
    bins = reliability_bins(conf, correct)
    assert len(bins) == 15
    assert [b["count"] for b in bins] == [0] * 8 + [2] + [0] * 5 + [4]
    assert bins[14] == pytest.approx(
        {"lower": 14 / 15, "upper": 1.0, "count": 4, "confidence": 0.95, "accuracy": 0.75}
    )
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None


def test_bins_include_their_upper_edge():
    bins = reliability_bins(np.array([1 / 15, 1.0]), np.array([True, True]))

    assert bins[0]["count"] == 1 and bins[14]["count"] == 1


def test_a_perfectly_calibrated_set_has_no_error():
    conf = np.array([0.8] * 5 + [0.4] * 5)
    correct = np.array([True] * 4 + [False] + [True] * 2 + [False] * 3)

    assert expected_calibration_error(conf, correct) == pytest.approx(0.0)


# --- coverage and the review threshold -------------------------------------------------------


def hand_made() -> Outcomes:
    """Six photos: sub confidence, and whether the sub and the main category were right."""
    sub_conf = np.array([0.30, 0.50, 0.50, 0.70, 0.90, 0.95])
    sub_ok = np.array([False, False, True, True, True, True])
    main_ok = np.array([False, True, True, True, True, True])
    truth = np.zeros(6, dtype=int)
    return Outcomes(
        sub_pred=np.where(sub_ok, 0, 1),
        sub_confidence=sub_conf,
        main_pred=np.where(main_ok, 0, 1),
        main_confidence=np.minimum(sub_conf + 0.04, 1.0),
        sub_true=truth,
        main_true=truth,
    )


def test_coverage_table_counts_what_each_threshold_flags_and_keeps():
    table = coverage_table(hand_made(), [0.0, 0.3, 0.31, 0.5, 0.6, 0.95, 0.96])

    got = [
        (r["threshold"], r["flagged"], r["kept"], r["main_accuracy"], r["sub_accuracy"])
        for r in table
    ]
    assert got == [
        (0.0, 0.0, 6, 5 / 6, 4 / 6),
        (0.3, 0.0, 6, 5 / 6, 4 / 6),  # flagged means strictly below the threshold
        (0.31, 1 / 6, 5, 1.0, 4 / 5),
        (0.5, 1 / 6, 5, 1.0, 4 / 5),
        (0.6, 3 / 6, 3, 1.0, 1.0),
        (0.95, 5 / 6, 1, 1.0, 1.0),
        (0.96, 1.0, 0, None, None),
    ]


def test_default_thresholds_are_the_grid_and_every_confidence():
    table = coverage_table(hand_made())

    thresholds = [r["threshold"] for r in table]
    assert thresholds == sorted(thresholds)
    assert {i / 100 for i in range(101)} <= set(thresholds)
    assert {0.3, 0.5, 0.7, 0.9, 0.95} <= set(thresholds)
    assert len(thresholds) == 101  # each confidence here is on the grid already
    # The more a threshold flags, the fewer it keeps, and it never un-flags a photo.
    flagged = [r["flagged"] for r in table]
    assert flagged == sorted(flagged)
    assert [r["kept"] for r in table] == sorted((r["kept"] for r in table), reverse=True)
    assert table[0]["flagged"] == 0.0 and table[-1]["flagged"] == 1.0
    assert all(r["kept"] == round(6 * (1 - r["flagged"])) for r in table)


def test_coverage_of_random_outcomes_follows_its_definition():
    rng = np.random.default_rng(5)
    n = 500
    conf = rng.uniform(0.2, 1.0, n)
    sub_ok = rng.uniform(size=n) < conf
    main_ok = sub_ok | (rng.uniform(size=n) < 0.5)
    seen = Outcomes(
        np.where(sub_ok, 0, 1), conf, np.where(main_ok, 0, 1), conf, np.zeros(n), np.zeros(n)
    )

    for row in coverage_table(seen):
        kept = conf >= row["threshold"]
        assert row["flagged"] == pytest.approx(1 - kept.mean())
        assert row["kept"] == kept.sum()
        if kept.any():
            assert row["sub_accuracy"] == pytest.approx(sub_ok[kept].mean())
            assert row["main_accuracy"] == pytest.approx(main_ok[kept].mean())


def test_the_smallest_threshold_reaching_the_target_on_both_levels_is_chosen():
    table = coverage_table(hand_made())

    # Sub accuracy of the photos kept: 4/6 up to 0.30, 4/5 up to 0.50, then 1.0.
    assert choose_review_threshold(table, 0.8)["threshold"] == 0.31
    assert choose_review_threshold(table, 0.97)["threshold"] == 0.51
    assert choose_review_threshold(table, 0.6)["threshold"] == 0.0
    chosen = choose_review_threshold(table, 1.0)
    assert (chosen["threshold"], chosen["flagged"], chosen["kept"]) == (0.51, 0.5, 3)


def test_the_main_level_must_reach_the_target_too():
    seen = hand_made()
    seen.main_pred[4] = 1  # the photo at 0.90 now has its main category wrong
    table = coverage_table(seen)

    chosen = choose_review_threshold(table, 0.97)

    assert chosen["threshold"] == 0.91
    assert (chosen["sub_accuracy"], chosen["main_accuracy"]) == (1.0, 1.0)


def test_no_threshold_reaching_the_target_gives_none():
    seen = hand_made()
    seen.sub_pred[:] = 1  # every sub category wrong
    table = coverage_table(seen)

    assert choose_review_threshold(table, 0.97) is None
    assert choose_review_threshold([], 0.5) is None
