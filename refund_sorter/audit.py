"""The blind audit sample: which confident photos a person decides without seeing the
model's answer, so that their decisions measure how often the unflagged photos are wrong;
and which photos the review desk shows blind (``shown_blind``): the audits, and a share of
the flagged photos, so that the promotion gate has blind labels of those too.

The draw is a function of the photo's content, the model version and a seed alone, so every
worker draws the same, and a night is re-drawn exactly from its rows.
"""

from collections.abc import Sequence
from hashlib import sha256


def audit_draw(content_hash: str, model_version: str, seed: str) -> float:
    """A number in [0, 1), uniform over photos, fixed for one photo, model and seed."""
    digest = sha256(f"{seed}:{model_version}:{content_hash}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_audited(
    content_hash: str, model_version: str, seed: str, rate: float, *, needs_review: bool
) -> bool:
    """Whether a classified photo belongs to the audit sample: a confident one (not flagged
    for review) whose draw falls below ``rate``. Flagged photos are reviewed anyway."""
    return not needs_review and audit_draw(content_hash, model_version, seed) < rate


def shown_blind(
    content_hash: str,
    model_version: str,
    seed: str,
    flagged_share: float,
    *,
    audited: bool,
    needs_review: bool,
) -> bool:
    """Whether the review desk hides the model's answer of a photo: always for an audit; for
    a flagged photo when a draw of its own (not the audit's) falls below ``flagged_share``
    (``REFUND_SORTER_BLIND_FLAGGED_SHARE``), so the same photo is always shown alike."""
    if audited:
        return True
    return needs_review and audit_draw(content_hash, model_version, f"{seed}:blind") < flagged_share


def sub_margin(top_subs: Sequence[tuple[str, str, float]]) -> float | None:
    """The gap between the probabilities of the two best sub categories: small when the
    model hesitates between them (the best alone, when it names only one)."""
    if not top_subs:
        return None
    second = top_subs[1][2] if len(top_subs) > 1 else 0.0
    return top_subs[0][2] - second
