"""The live accuracy estimates, on simulated nights whose truth is known: a staged model
whose errors are drawn at one accuracy on the flagged photos and another on the confident
ones, a blind audit of the confident ones, reviews of part of the flagged ones."""

import numpy as np
import pytest

from refund_sorter.stats import clopper_pearson, wilson
from review.accuracy import Counts, figures, proportion
from review.threshold import Confidences, suggest

NIGHTS = 600


def simulated_night(rng: np.random.Generator, *, flagged_right=0.6, confident_right=0.93):
    """A night's counts, and its true accuracies: unflagged, the model's, as filed."""
    photos = int(rng.integers(1500, 4000))
    flagged = rng.random(photos) < 0.12
    right = np.where(
        flagged, rng.random(photos) < flagged_right, rng.random(photos) < confident_right
    )
    audited = ~flagged & (rng.random(photos) < 0.03)
    reviewed = flagged & (rng.random(photos) < rng.uniform(0.3, 1.0))
    counts = Counts(
        photos=photos,
        flagged=int(flagged.sum()),
        flagged_decided=int(reviewed.sum()),
        flagged_right_main=int((reviewed & right).sum()),
        flagged_right_sub=int((reviewed & right).sum()),
        audits=int(audited.sum()),
        audits_decided=int(audited.sum()),
        audits_right_main=int((audited & right).sum()),
        audits_right_sub=int((audited & right).sum()),
    )
    truth = {
        "unflagged": right[~flagged].mean(),
        "model": right.mean(),
        "filed": (reviewed | right).mean(),
    }
    return counts, truth


def test_the_95_percent_intervals_hold_the_truth_95_times_in_100():
    rng = np.random.default_rng(17)
    held = {"unflagged": 0, "model": 0, "filed": 0}
    for _ in range(NIGHTS):
        counts, truth = simulated_night(rng)
        f = figures([(counts, {})])
        for name, estimate in (
            ("unflagged", f.unflagged_sub),
            ("model", f.model_sub),
            ("filed", f.filed_sub),
        ):
            held[name] += estimate.low <= truth[name] <= estimate.high
    for name, n in held.items():
        assert 0.93 <= n / NIGHTS <= 0.97, (name, n / NIGHTS)


def test_the_naive_mean_of_the_labelled_photos_misses_a_staged_night():
    # 5000 photos: 1000 flagged, of which the model has half right and reviewers decided 400;
    # 4000 confident, 95% right, 120 of them audited (114 right).
    counts = Counts(
        photos=5000,
        flagged=1000,
        flagged_decided=400,
        flagged_right_main=300,
        flagged_right_sub=200,
        audits=120,
        audits_decided=120,
        audits_right_main=118,
        audits_right_sub=114,
    )
    f = figures([(counts, {})])
    naive = (200 + 114) / (400 + 120)  # every labelled photo counted alike: 60%
    model, filed = f.model_sub, f.filed_sub
    assert model.value == pytest.approx(0.2 * 0.5 + 0.8 * 0.95)
    assert not model.low <= naive <= model.high
    assert filed.value == pytest.approx(0.2 * (0.4 + 0.6 * 0.5) + 0.8 * (0.03 + 0.97 * 0.95))
    assert not filed.low <= naive <= filed.high
    assert f.corrected.value == pytest.approx(0.5) and f.corrected.n == 400
    assert f.unflagged_sub.value == pytest.approx(0.95) and f.unflagged_sub.method == "wilson"
    assert not f.provisional


def test_small_counts_get_the_exact_interval_and_none_no_figure():
    # Clopper-Pearson's published values for 5 of 20 and 0 of 10.
    assert clopper_pearson(5, 20) == pytest.approx((0.0866, 0.4910), abs=1e-4)
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 0.3085), abs=1e-4)
    assert proportion(5, 20).method == "clopper-pearson"
    assert proportion(50, 200).method == "wilson"
    assert wilson(50, 200) == pytest.approx((0.1951, 0.3143), abs=1e-4)  # by hand
    empty = proportion(0, 0)
    assert empty.value is None and empty.n == 0
    assert figures([]).filed_sub.value is None


def test_a_night_with_audits_left_is_provisional_and_the_window_pools_nights():
    rng = np.random.default_rng(3)
    nights = [simulated_night(rng)[0] for _ in range(3)]
    nights[0].audits_decided -= 1
    f = figures([(c, {}) for c in nights])
    assert f.provisional
    assert f.counts.photos == sum(c.photos for c in nights)
    assert f.unflagged_sub.method == "stratified"
    # A real interval around the value, not collapsed onto it nor the whole [0, 1].
    u = f.unflagged_sub
    assert u.low < u.value < u.high and 0.02 < u.high - u.low < 0.2


def test_the_suggested_threshold_reaches_the_target_on_simulated_nights():
    # A staged model right with probability 0.5 + c/2 at sub confidence c; flagged below 0.6,
    # every flagged photo reviewed, 10% of the confident ones audited.
    rng = np.random.default_rng(5)
    strata, every_c, every_right = [], [], []
    for _ in range(30):
        c = rng.beta(5, 2, 3000)
        right = rng.random(3000) < 0.5 + c / 2
        flagged = c < 0.6
        audited = ~flagged & (rng.random(3000) < 0.1)
        for part, labelled, kind in ((flagged, flagged, "flagged"), (~flagged, audited, "")):
            strata.append(
                Confidences(
                    c[part], c[part & labelled], c[part & labelled & right], kind or "unflagged"
                )
            )
        every_c.append(c)
        every_right.append(right)
    c, right = np.concatenate(every_c), np.concatenate(every_right)

    found = suggest(strata, target=0.97, min_labelled=100)

    point = found.suggested
    assert point is not None and point.threshold > 0.6
    truth = right[c >= point.threshold].mean()
    assert point.accuracy.low <= truth <= point.accuracy.high
    assert truth >= 0.97 - 0.01
    assert point.flagged_share == pytest.approx((c < point.threshold).mean())
    # Its lower bound reaches the target, on enough labels; one step lower no longer does.
    assert point.accuracy.low >= 0.97 and point.accuracy.n >= 100
    below = next(p for p in found.curve if p.threshold == round(point.threshold - 0.01, 2))
    assert below.accuracy.low < 0.97
