"""The blind audit sample: which confident photos a person decides without seeing the
model's answer, so that their decisions measure how often the unflagged photos are wrong.

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


def sub_margin(top_subs: Sequence[tuple[str, str, float]]) -> float | None:
    """The gap between the probabilities of the two best sub categories: small when the
    model hesitates between them (the best alone, when it names only one)."""
    if not top_subs:
        return None
    second = top_subs[1][2] if len(top_subs) > 1 else 0.0
    return top_subs[0][2] - second
