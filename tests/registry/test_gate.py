"""registry/gate.py: the gate judges on the same accuracy the Models page and ``model compare``
show (``review.accuracy`` adds the interval), so the two can never disagree."""

import random

from registry.gate import Labelled, Live, gate, paired_strata, point_share, stratified_point
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
    worse = [Labelled(1, True, (True, True), (False, False))] * 120
    main, sub = (paired_strata(worse, {(1, True): 120}, level) for level in ("main", "sub"))
    decision = gate(Live(main, sub, len(worse)), None, p_value=0.05, min_labelled=100)
    assert not decision.passed
    assert decision.reasons[0].startswith("live: the candidate's main accuracy 0.0% is below")
