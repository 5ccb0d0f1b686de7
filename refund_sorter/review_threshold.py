"""The review threshold in force for a model version: the one owner of that rule.

Below it a photo's sub confidence flags it for review. In order of precedence:

1. ``REFUND_SORTER_REVIEW_THRESHOLD``, when set: a deployment-wide override that every model
   takes, whatever was set for it. Meant for a pinned value or an emergency; leave it unset
   otherwise, or a later model inherits a value tuned for another.
2. The value set for this model version with ``refund-sorter threshold --set`` (stored in the
   database, one per version: another model never inherits it).
3. The threshold stored in the model file, chosen on held-out photos when it was trained.

Workers and local mode read it for each batch, so a value set or cleared applies from their
next batch on, without a restart. Torch-free: the CLI asks without loading a model.
"""

from dataclasses import dataclass

from sqlalchemy.orm import Session

from refund_sorter.config import Settings
from refund_sorter.crud import as_utc, review_threshold_set

SETTING = "REFUND_SORTER_REVIEW_THRESHOLD"


@dataclass(frozen=True)
class InForce:
    value: float
    source: str  # "setting", "set" (for this model version) or "model"
    why: str  # where it comes from, in words


def review_threshold_in_force(
    session: Session, settings: Settings, *, model_version: str, model_threshold: float
) -> InForce:
    """The threshold in force for ``model_version``, whose model file stores
    ``model_threshold``; the database is asked only when the setting is unset."""
    if settings.review_threshold is not None:
        return InForce(
            settings.review_threshold, "setting", f"{SETTING}, which overrides it for every model"
        )
    stored = review_threshold_set(session, model_version=model_version)
    if stored is not None:
        return InForce(stored.threshold, "set", f"set for this model ({describe_set(stored)})")
    return InForce(model_threshold, "model", "stored in the model file")


def describe_set(stored) -> str:
    """Who set a ``ReviewThreshold`` row, and when."""
    return f"by {stored.set_by} on {as_utc(stored.set_at):%Y-%m-%d %H:%M} UTC"
