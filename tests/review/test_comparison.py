"""The comparison's statistics and the gate, on generated rows whose truth is known."""

import numpy as np
import pytest

from refund_sorter.config import GATE_MIN_LABELLED
from refund_sorter.stats import PAIRED_DIFFERENCE, PairedStratum, paired_difference
from registry.gate import (
    FOLDER,
    Labelled,
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
    """One night: ``flagged`` of ``photos`` flagged and all reviewed (seen), 3% of the
    others audited (blind); each model right at its own rate (by stratum), the candidate copying the
    serving model's outcome on a share ``same`` of the photos. Returns (stratum sizes,
    labelled photos)."""
    labelled = []
    audits = rng.binomial(photos - flagged, 0.03)
    for is_flagged, n in ((True, flagged), (False, audits)):
        s_rate, c_rate = serving_right[is_flagged], candidate_right[is_flagged]
        s = rng.random(n) < s_rate
        c = np.where(rng.random(n) < same, s, rng.random(n) < c_rate)
        labelled += [
            Labelled(sweep, is_flagged, (a, a), (b, b), blind=not is_flagged)
            for a, b in zip(s, c, strict=True)
        ]
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


def test_an_equal_candidate_shows_no_difference_and_passes_the_gate():
    # 10 nights, about 550 audits: a copy's bound is under a point.
    same = simulated(1, nights=10, serving_right=SERVING, candidate_right=SERVING, same=1)
    for paired in (same.main, same.sub):
        assert paired.candidate_only == paired.serving_only == 0
        assert paired.difference.value == 0.0 and 0 < paired.difference.upper < 0.01
        assert paired.candidate == paired.serving
        assert paired.difference.method == PAIRED_DIFFERENCE
    decision = gate(same, None, margin=0.01, min_labelled=100)
    assert decision.passed and decision.reasons == [] and decision.judged_on == ["live"]


def test_a_candidate_as_good_but_different_passes_once_the_audits_are_enough():
    # Half its outcomes its own: a few hundred audits cannot tell it from one a point or
    # two worse, the minimum of blind labels can.
    few = simulated(2, serving_right=SERVING, candidate_right=SERVING, same=0.5)
    assert few.sub.candidate_only > 0 and few.sub.serving_only > 0
    assert not gate(few, None, margin=0.01, min_labelled=100).passed
    found = simulated(2, nights=100, serving_right=SERVING, candidate_right=SERVING, same=0.5)
    assert found.main.blind_unflagged >= GATE_MIN_LABELLED
    assert gate(found, None, margin=0.01, min_labelled=GATE_MIN_LABELLED).passed


def test_a_clearly_worse_candidate_is_refused_with_figures():
    found = simulated(3, serving_right=SERVING, candidate_right={True: 0.3, False: 0.8})
    assert found.sub.candidate.value < found.sub.serving.value
    assert found.sub.serving_only > 3 * found.sub.candidate_only
    assert found.sub.difference.value > 0.1
    decision = gate(found, None, margin=0.01, min_labelled=100)
    assert not decision.passed
    reasons = " ".join(decision.reasons)
    assert "live: the candidate's main accuracy may be up to" in reasons
    assert "live: the candidate's sub accuracy may be up to" in reasons
    assert f"{100 * found.sub.candidate.value:.1f}%" in reasons
    assert f"{100 * found.sub.serving.value:.1f}%" in reasons
    audits = [s for s in found.sub.strata if not s.flagged]
    assert f"unflagged: {sum(s.serving_only for s in audits)} photos only the serving" in reasons
    # A clearly better one passes: the gate refuses worse, never better.
    better = simulated(3, serving_right={True: 0.3, False: 0.8}, candidate_right=SERVING)
    assert better.sub.difference.upper < 0
    assert gate(better, None, margin=0.01, min_labelled=100).passed


def test_too_few_blind_labels_refuse_unless_the_folder_has_enough():
    rng = np.random.default_rng(4)
    sizes, labelled = night_photos(
        rng, 1, photos=4000, flagged=600, serving_right=SERVING, candidate_right=SERVING, same=1
    )
    few = live_figures(tallies(sizes, labelled))
    blind = few.main.blind_unflagged
    assert 0 < blind < 500 < few.labelled
    decision = gate(few, None, margin=0.01, min_labelled=500)
    assert not decision.passed
    assert decision.reasons[0].startswith(
        f"too few blind labels to judge: {blind} unflagged photos labelled blind (decided "
        f"audits) in 1 night, 500 needed (REFUND_SORTER_GATE_MIN_LABELLED): at the {blind} a "
        f"night so far, about {-(-(500 - blind) // blind)} more nights; or a labelled folder"
    )
    folder = _folder(photos=600)
    judged = gate(few, folder, margin=0.01, min_labelled=500)
    assert judged.passed and judged.judged_on == ["folder"]
    assert judged.rests_on["folder"] == {FOLDER: 1.0}
    assert set(judged.rests_on["live"]) == {"blind", "seen"}
    refused = gate(few, _folder(photos=499), margin=0.01, min_labelled=500)
    assert not refused.passed and "499 photos in data are too few as well" in refused.reasons[0]


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
    same = simulated(5, nights=10, serving_right=SERVING, candidate_right=SERVING, same=1)
    serving = [True] * 600
    candidate = [i % 4 != 0 for i in range(600)]  # 150 wrong where the serving model is right
    folder = _folder(600)
    folder.sub = paired_photos(serving, candidate, "sub")
    assert folder.sub.difference.value == 0.25
    decision = gate(same, folder, margin=0.01, min_labelled=100)
    assert not decision.passed and decision.judged_on == ["live", "folder"]
    (reason,) = decision.reasons  # the main level, the same on both models, passes
    assert reason.startswith("folder: the candidate's sub accuracy may be up to")
    assert "serving 100.0%, candidate 75.0%" in reason


def test_the_difference_pools_each_flag_over_the_nights_weighted_by_its_photos():
    # Two nights: in night 1 the flagged photos 6 to 1 for the serving model, the audits 5
    # to 2; night 2 its 100 audits all agreeing.
    def photos(sweep, flagged, serving_only, candidate_only, both):
        return (
            [Labelled(sweep, flagged, (True, True), (False, False), not flagged)] * serving_only
            + [Labelled(sweep, flagged, (False, False), (True, True), not flagged)] * candidate_only
            + [Labelled(sweep, flagged, (True, True), (True, True), not flagged)] * both
        )

    labelled = photos(1, True, 6, 1, 3) + photos(1, False, 5, 2, 40) + photos(2, False, 0, 0, 100)
    sizes = {(1, True): 10, (1, False): 1000, (2, False): 2000}
    found = paired_strata(labelled, sizes, "sub")
    assert (found.serving_only, found.candidate_only) == (11, 3)
    assert [(s.sweep, s.flagged, s.serving_only, s.candidate_only) for s in found.strata] == [
        (1, False, 5, 2),
        (1, True, 6, 1),
        (2, False, 0, 0),
    ]
    assert found.difference == paired_difference(
        [PairedStratum(10, 10, 6, 1), PairedStratum(3000, 147, 5, 2)]
    )
    assert found.difference.value == pytest.approx(10 / 3010 * 5 / 10 + 3000 / 3010 * 3 / 147)
    assert found.blind_unflagged == 147
    assert found.rests_on == {"blind": pytest.approx(3000 / 3010), "seen": pytest.approx(10 / 3010)}
    # The accuracies are weighted by night and flag, as the accuracy pages weight them.
    assert found.serving.value == pytest.approx((10 * 0.9 + 1000 * 45 / 47 + 2000 * 1.0) / 3010)


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
