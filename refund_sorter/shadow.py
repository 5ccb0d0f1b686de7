"""Which photos a shadow run gives the candidate model, and the chance each had: the one
owner of that rule (``worker.shadow`` runs the candidate; ``model compare`` weights by it).

Every photo the serving model flagged or that was drawn for the audit is shadowed: those are
the photos people label, so the candidate's accuracy is measured on them. Of the others, a
fixed share (REFUND_SORTER_SHADOW_RATE), so that agreement is known on the confident photos
too at a fraction of the cost. That draw is a function of the photo's content alone, salted
apart from the audit's draw (``refund_sorter.audit``) so that the two samples are
independent, and the same for every worker and every candidate: two candidates are shadowed
on the same photos.
"""

from hashlib import sha256

# Keeps the shadow draw apart from the audit's (salted with REFUND_SORTER_AUDIT_SEED and the
# serving model's version).
SALT = "refund-sorter-shadow"


def shadow_draw(content_hash: str) -> float:
    """A number in [0, 1), uniform over photos, fixed for one photo."""
    digest = sha256(f"{SALT}:{content_hash}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def shadow_probability(
    content_hash: str, rate: float, *, needs_review: bool, audited: bool
) -> float | None:
    """The chance a photo the serving model classified had of being shadowed, if it is:
    1.0 for a flagged or audited photo, ``rate`` for another one whose draw falls below
    it, None for one that is not shadowed."""
    if needs_review or audited:
        return 1.0
    return rate if shadow_draw(content_hash) < rate else None
