"""registry/gate.py: the gate judges on the same accuracy the Models page and ``model compare``
show (``review.accuracy`` adds the interval), so the two can never disagree; and it answers
the operator's question, would the candidate file the nights' photos worse, on the nights
that the old pooled McNemar test got wrong."""

import random

import pytest

from refund_sorter.config import GATE_MIN_LABELLED
from refund_sorter.stats import PairedStratum, paired_difference, paired_upper
from registry.gate import (
    BLIND,
    SEEN,
    Labelled,
    Live,
    gate,
    paired_strata,
    point_share,
    stratified_point,
)
from review.accuracy import Stratum, proportion, stratified


def test_the_gate_s_accuracy_is_the_shown_one_to_the_last_bit():
    rng = random.Random(7)
    for _ in range(200):
        strata = []
        for _ in range(rng.randint(1, 12)):
            size = rng.randint(0, 3000)
            labelled = rng.randint(0, min(size, 200))
            strata.append((size, labelled, rng.randint(0, labelled)))
        shown = stratified((Stratum(*s) for s in strata), filed=False).value
        assert stratified_point(strata).value == shown
    for k, n in ((0, 0), (0, 7), (29, 30), (97, 120)):
        assert point_share(k, n).value == proportion(k, n).value


def test_the_gate_reads_its_own_live_tallies():
    worse = [Labelled(1, False, (True, True), (False, False), blind=True)] * 120
    main, sub = (paired_strata(worse, {(1, False): 1200}, level) for level in ("main", "sub"))
    decision = gate(Live(main, sub, 1), None, margin=0.01, min_labelled=100)
    assert not decision.passed
    assert decision.reasons[0].startswith("live: the candidate's main accuracy may be up to")
    assert decision.judged_on == ["live"] and decision.blind_labels == 120


def test_the_difference_s_bound_by_hand():
    z = 1.6448536
    # 3 photos only the serving model had right, 1 only the candidate, of 20: half a photo
    # added to each cell, Tango's score bound on (3.5, 1.5) of 22.
    found = paired_difference([PairedStratum(100, 20, 3, 1)])
    assert found.value == pytest.approx(2 / 20)
    assert found.upper == pytest.approx(paired_upper(3.5, 1.5, 22, z))
    assert 2 / 22 < found.upper < 0.5
    # No discordant photo: still a bound above 0, narrowing as labels accumulate.
    few, many = (paired_difference([PairedStratum(10**6, n, 0, 0)]) for n in (50, 5000))
    assert few.value == 0 and 0.02 < few.upper < 0.1 and 0 < many.upper < 0.001
    # Strata combine by MOVER: the weighted point plus the root of the weighted squares of
    # each stratum's distance to its bound.
    two = paired_difference([PairedStratum(300, 40, 6, 1), PairedStratum(700, 200, 4, 5)])
    points = [(6 - 1) / 42, (4 - 5) / 202]
    bounds = [paired_upper(6.5, 1.5, 42, z), paired_upper(4.5, 5.5, 202, z)]
    weights = [0.3, 0.7]
    assert two.upper == pytest.approx(
        sum(w * p for w, p in zip(weights, points, strict=True))
        + sum((w * (u - p)) ** 2 for w, u, p in zip(weights, bounds, points, strict=True)) ** 0.5
    )
    # A stratum with photos and no label widens the bound by its weight.
    unknown = paired_difference([PairedStratum(900, 5000, 0, 0), PairedStratum(100, 0, 0, 0)])
    assert unknown.upper > 0.1 * 0.5
    assert paired_difference([]).upper is None


def night_labels(nights, flagged, audits):
    """Labelled photos of ``nights`` nights from the counts over all of them of (both right,
    serving only, candidate only, both wrong), flagged (seen) and audited (blind), dealt
    round the nights."""
    photos = []
    for is_flagged, counts in ((True, flagged), (False, audits)):
        outcomes = [(True, True), (True, False), (False, True), (False, False)]
        cells = [o for o, n in zip(outcomes, counts, strict=True) for _ in range(n)]
        for i, (s, k) in enumerate(cells):
            photos.append(Labelled(1 + i % nights, is_flagged, (s, s), (k, k), not is_flagged))
    return photos


def five_nights(flagged, audits, scale=1):
    """The issue's nights: 2,000 photos each, 150 flagged and all reviewed, 60 audits."""
    nights = 5 * scale
    sizes = {}
    for n in range(1, nights + 1):
        sizes[(n, True)], sizes[(n, False)] = 150, 1850
    labelled = night_labels(nights, [scale * c for c in flagged], [scale * c for c in audits])
    main, sub = (paired_strata(labelled, sizes, level) for level in ("main", "sub"))
    return Live(main, sub, nights)


def test_a_candidate_better_on_the_flagged_photos_is_not_refused_as_worse():
    # It wins 165 to 65 on the flagged photos and is marginally worse on the audits (6 to 4):
    # the pooled McNemar test called that "worse beyond noise, p = 3.3e-11".
    flagged, audits = (385, 65, 165, 135), (279, 6, 4, 11)
    live = five_nights(flagged, audits)
    assert live.sub.difference.value < 0  # the flagged photos count for it, by their weight
    decision = gate(live, None, margin=0.01, min_labelled=GATE_MIN_LABELLED)
    assert not decision.passed
    (reason,) = decision.reasons
    assert reason.startswith("too few blind labels to judge: 300 unflagged photos labelled")
    assert "at the 60 a night so far, about 79 more nights" in reason
    assert "a labelled folder of at least" in reason and "--data DIR" in reason
    assert live.sub.rests_on[BLIND] == pytest.approx(0.925)
    assert live.sub.rests_on[SEEN] == pytest.approx(0.075)
    # The same rates over 100 nights (6,000 audits): it passes.
    assert gate(
        five_nights(flagged, audits, scale=20), None, margin=0.01, min_labelled=GATE_MIN_LABELLED
    ).passed


def test_a_candidate_worse_on_the_audits_is_refused_though_the_pooled_photos_tie():
    # 35 to 5 against it on the audits, 80 to 50 for it on the flagged photos: 85 to 85
    # pooled, which passed; its weighted accuracy is 83.4% against 92.4%.
    flagged, audits = (400, 50, 80, 220), (250, 35, 5, 10)
    live = five_nights(flagged, audits)
    assert f"{100 * live.sub.serving.value:.1f}" == "92.4"
    assert f"{100 * live.sub.candidate.value:.1f}" == "83.4"
    assert live.sub.difference.value == pytest.approx(0.924 - 0.834, abs=0.001)
    assert not gate(live, None, margin=0.01, min_labelled=GATE_MIN_LABELLED).passed
    # Judged on its 300 audits as well, it is refused for what they show.
    decision = gate(live, None, margin=0.01, min_labelled=300)
    assert not decision.passed and decision.judged_on == ["live"]
    assert decision.reasons[1].startswith("live: the candidate's sub accuracy may be up to 12.")
    assert "serving 92.4%, candidate 83.4%, difference +8.9 points" in decision.reasons[1]
    assert (
        "35 photos only the serving model had right, 5 only the candidate" in (decision.reasons[1])
    )
