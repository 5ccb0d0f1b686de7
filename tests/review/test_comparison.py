"""The comparison's statistics and the gate, on generated rows whose truth is known."""

import numpy as np
import pytest

from registry.gate import (
    MCNEMAR,
    Labelled,
    exact_binomial_p,
    gate,
    paired_photos,
    paired_strata,
)
from review.accuracy import Estimate
from review.comparison import (
    HAJEK,
    LeftOut,
    ShadowGroup,
    Tallies,
    figure,
    hajek,
    live_figures,
    median,
)


def night_photos(rng, sweep, *, photos, flagged, serving_right, candidate_right, same=0.0):
    """One night: ``flagged`` of ``photos`` flagged and all reviewed, 3% of the others
    audited; each model right at its own rate (by stratum), the candidate copying the
    serving model's outcome on a share ``same`` of the photos. Returns (stratum sizes,
    labelled photos)."""
    labelled = []
    audits = rng.binomial(photos - flagged, 0.03)
    for is_flagged, n in ((True, flagged), (False, audits)):
        s_rate, c_rate = serving_right[is_flagged], candidate_right[is_flagged]
        s = rng.random(n) < s_rate
        c = np.where(rng.random(n) < same, s, rng.random(n) < c_rate)
        labelled += [Labelled(sweep, is_flagged, (a, a), (b, b)) for a, b in zip(s, c, strict=True)]
    return {(sweep, True): flagged, (sweep, False): photos - flagged}, labelled


def tallies(sizes, labelled, **overrides) -> Tallies:
    values = dict(
        candidate="cand",
        serving="serv",
        since="2026-01-01T00:00:00+00:00",
        nights=len({s for s, _ in sizes}),
        sizes=sizes,
        labelled=labelled,
        labelled_without_candidate=0,
        audits_undecided=0,
        groups=[ShadowGroup(1.0, len(labelled), len(labelled), len(labelled), 0)],
        seconds=[(0.01, 0.012, len(labelled))],
        left_out=LeftOut(),
        training_photos_known=True,
    )
    values.update(overrides)
    return Tallies(**values)


def simulated(seed, nights=5, **rates):
    rng = np.random.default_rng(seed)
    sizes, labelled = {}, []
    for sweep in range(1, nights + 1):
        s, photos = night_photos(rng, sweep, photos=2000, flagged=150, **rates)
        sizes.update(s)
        labelled += photos
    return live_figures(tallies(sizes, labelled))


SERVING = {True: 0.6, False: 0.95}  # right on the flagged photos, on the others


def test_exact_binomial_p_values_by_hand_and_for_large_counts():
    assert exact_binomial_p(0, 10) == pytest.approx(2 / 1024)
    assert exact_binomial_p(2, 10) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert exact_binomial_p(8, 10) == exact_binomial_p(2, 10)
    assert exact_binomial_p(5, 10) == 1.0
    assert exact_binomial_p(0, 0) == 1.0
    # Thousands of discordant photos: no overflow, and a 52/48 split is still noise-like.
    assert 0.0 < exact_binomial_p(2400, 5000) < 0.01
    assert exact_binomial_p(2500, 5000) == 1.0


def test_an_equal_candidate_has_a_p_value_near_1_and_passes_the_gate():
    same = live_figures(tallies(*_copy_of_serving(seed=1)))
    for paired in (same.main, same.sub):
        assert paired.candidate_only == paired.serving_only == 0
        assert paired.p_value == 1.0
        assert paired.candidate == paired.serving
        assert paired.test == MCNEMAR
    decision = gate(same, None, p_value=0.05, min_labelled=100)
    assert decision.passed and decision.reasons == [] and decision.judged_on == ["live"]


def _copy_of_serving(seed):
    rng = np.random.default_rng(seed)
    sizes, labelled = night_photos(
        rng, 1, photos=4000, flagged=300, serving_right=SERVING, candidate_right=SERVING, same=1
    )
    return sizes, labelled


def test_a_candidate_as_good_but_different_is_not_called_worse():
    found = simulated(2, serving_right=SERVING, candidate_right=SERVING, same=0.5)
    assert found.sub.candidate_only > 0 and found.sub.serving_only > 0
    assert found.sub.p_value > 0.05
    assert gate(found, None, p_value=0.05, min_labelled=100).passed


def test_a_clearly_worse_candidate_gets_a_tiny_p_value_and_the_gate_refuses_with_figures():
    found = simulated(3, serving_right=SERVING, candidate_right={True: 0.3, False: 0.8})
    assert found.sub.candidate.value < found.sub.serving.value
    assert found.sub.serving_only > 3 * found.sub.candidate_only
    assert found.sub.p_value < 1e-9
    decision = gate(found, None, p_value=0.05, min_labelled=100)
    assert not decision.passed
    reasons = " ".join(decision.reasons)
    assert "live: the candidate's main accuracy" in reasons
    assert "live: the candidate's sub accuracy" in reasons
    assert f"{100 * found.sub.candidate.value:.1f}%" in reasons
    assert f"{100 * found.sub.serving.value:.1f}%" in reasons
    assert f"{found.sub.serving_only} photos only the serving model had right" in reasons
    # A clearly better one passes: the gate refuses worse, never better.
    better = simulated(3, serving_right={True: 0.3, False: 0.8}, candidate_right=SERVING)
    assert better.sub.p_value < 1e-9
    assert gate(better, None, p_value=0.05, min_labelled=100).passed


def test_too_few_labelled_photos_refuse_unless_the_folder_has_enough():
    rng = np.random.default_rng(4)
    sizes, labelled = night_photos(
        rng, 1, photos=400, flagged=20, serving_right=SERVING, candidate_right=SERVING, same=1
    )
    few = live_figures(tallies(sizes, labelled))
    assert few.labelled < 100
    decision = gate(few, None, p_value=0.05, min_labelled=100)
    assert not decision.passed
    assert (
        f"too few labelled photos to judge: {few.labelled} labelled live photos"
        in (decision.reasons[0])
    )
    folder = _folder(photos=150)
    assert gate(few, folder, p_value=0.05, min_labelled=100).judged_on == ["folder"]
    assert not gate(few, _folder(photos=99), p_value=0.05, min_labelled=100).passed


def _folder(photos):
    """A folder comparison on which both models are right on the same 90% of the photos."""
    from review.comparison import Folder, proportion

    right = [i % 10 != 0 for i in range(photos)]
    main, sub = (paired_photos(right, right, level) for level in ("main", "sub"))
    every = proportion(photos, photos)
    return Folder(
        "data", photos, 0, {}, 0, every, every, main, sub, 0.5, 0.5, every, every,
        "fp32", "fp32", 100.0, 100.0,
    )  # fmt: skip


def test_a_worse_candidate_on_the_folder_is_refused_even_when_live_is_fine():
    same = live_figures(tallies(*_copy_of_serving(seed=5)))
    serving = [True] * 200
    candidate = [i % 4 != 0 for i in range(200)]  # 50 wrong where the serving model is right
    folder = _folder(200)
    folder.sub = paired_photos(serving, candidate, "sub")
    assert folder.sub.p_value < 1e-12
    decision = gate(same, folder, p_value=0.05, min_labelled=100)
    assert not decision.passed
    assert decision.reasons[0].startswith("folder: the candidate's sub accuracy 75.0%")


def test_the_paired_test_pools_the_discordant_photos_of_every_stratum():
    # Two strata: 6 to 1 for the serving model in one, 5 to 2 in the other: 11 to 3 pooled.
    def photos(sweep, flagged, serving_only, candidate_only, both):
        return (
            [Labelled(sweep, flagged, (True, True), (False, False))] * serving_only
            + [Labelled(sweep, flagged, (False, False), (True, True))] * candidate_only
            + [Labelled(sweep, flagged, (True, True), (True, True))] * both
        )

    labelled = photos(1, True, 6, 1, 3) + photos(1, False, 5, 2, 40)
    found = paired_strata(labelled, {(1, True): 10, (1, False): 1000}, "sub")
    assert (found.serving_only, found.candidate_only) == (11, 3)
    assert found.p_value == pytest.approx(exact_binomial_p(3, 14))
    assert [(s.serving_only, s.candidate_only) for s in found.strata] == [(5, 2), (6, 1)]
    assert found.strata[1].p_value == pytest.approx(exact_binomial_p(1, 7))
    # Weighted by the strata's sizes: the flagged stratum (all 10 labelled) weighs 10/1010.
    assert found.serving.value == pytest.approx(10 / 1010 * 0.9 + 1000 / 1010 * 45 / 47)
    assert found.candidate.value == pytest.approx(10 / 1010 * 0.4 + 1000 / 1010 * 42 / 47)


def test_agreement_is_weighted_by_one_over_the_chance_of_being_shadowed():
    # 100 photos shadowed for certain (flagged or audited), all agreeing; 10 drawn at a 10%
    # rate from 100 others, 5 agreeing. Hajek: (100 + 5/0.1) / (100 + 10/0.1) = 0.75; the
    # unweighted share, 105/110, would overstate it.
    groups = [ShadowGroup(1.0, 100, 100, 100, 30), ShadowGroup(0.1, 10, 5, 5, 1)]
    found = hajek(groups, "agree_main")
    assert found.value == pytest.approx(0.75)
    assert found.method == HAJEK and found.n == 110
    assert found.low < 0.75 < found.high
    assert not found.low <= 105 / 110 <= found.high
    assert hajek(groups, "candidate_flagged").value == pytest.approx((30 + 10) / 200)
    # Every photo shadowed for certain: known exactly.
    exact = hajek([ShadowGroup(1.0, 50, 40, 40, 0)], "agree_main")
    assert exact.value == exact.low == exact.high == 0.8


def test_the_hajek_interval_holds_the_truth_about_95_times_in_100():
    rng = np.random.default_rng(7)
    held, runs = 0, 400
    for _ in range(runs):
        certain = 300  # flagged or audited: always shadowed, agree 70%
        others = 5000  # shadowed at 10%, agree 97%
        agree_certain = rng.random(certain) < 0.7
        agree_others = rng.random(others) < 0.97
        drawn = rng.random(others) < 0.1
        truth = (agree_certain.sum() + agree_others.sum()) / (certain + others)
        groups = [
            ShadowGroup(1.0, certain, int(agree_certain.sum()), 0, 0),
            ShadowGroup(0.1, int(drawn.sum()), int((agree_others & drawn).sum()), 0, 0),
        ]
        found = hajek(groups, "agree_main")
        held += found.low <= truth <= found.high
    assert 0.92 <= held / runs <= 0.98, held / runs


def test_flagged_share_speed_and_counts_of_the_live_figures():
    sizes = {(1, True): 30, (1, False): 270, (2, True): 20, (2, False): 180}
    labelled = [Labelled(1, True, (True, True), (True, False))] * 4
    t = tallies(
        sizes,
        labelled,
        groups=[ShadowGroup(1.0, 60, 55, 50, 25), ShadowGroup(0.1, 44, 44, 40, 2)],
        seconds=[(0.010, 0.020, 50), (0.011, 0.030, 40), (0.5, 0.9, 14)],
        left_out=LeftOut(photos=3, shadowed=2, labelled=1),
        labelled_without_candidate=2,
    )
    found = live_figures(t)
    assert found.photos == 500 and found.shadowed == 104 and found.labelled == 4
    assert found.flagged_serving == Estimate(0.1, 0.1, 0.1, 500, "every photo")
    assert found.flagged_candidate.value == pytest.approx((25 + 20) / (60 + 440))
    assert found.serving_seconds == 0.011 and found.candidate_seconds == 0.030
    assert found.left_out == LeftOut(3, 2, 1) and found.labelled_without_candidate == 2
    assert found.sub.serving_only == 4 and found.main.serving_only == 0
    assert median([]) is None


def test_no_estimate_for_the_others_before_one_of_them_is_shadowed():
    # 40 flagged photos shadowed for certain; 300 others, none drawn yet (or a rate of 0).
    sizes = {(1, True): 40, (1, False): 300}
    certain = [ShadowGroup(1.0, 40, 30, 30, 10)]
    found = live_figures(tallies(sizes, [], groups=certain, others=300))
    for estimate in (found.agreement_main, found.agreement_sub, found.flagged_candidate):
        assert estimate.value is None and estimate.n == 40
    assert figure(found.agreement_sub).startswith("n/a (none of the photos neither flagged")
    drawn = [*certain, ShadowGroup(0.1, 30, 30, 30, 0)]
    assert live_figures(tallies(sizes, [], groups=drawn, others=300)).agreement_sub.value == (
        pytest.approx((30 + 300) / (40 + 300))
    )
