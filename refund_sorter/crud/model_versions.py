"""The model registry's rows: versions, which one serves and which is the candidate, and
every promotion, retirement and rollback, each recorded with who."""

import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models import ModelPromotion, ModelRole, ModelVersion, PromotionAction, SweepRun, utcnow

log = logging.getLogger(__name__)


def model_version_known(session: Session, *, model_version: str) -> bool:
    """Whether the registry knows ``model_version`` or a sweep ran with it (so a photo was,
    or is to be, classified by it)."""
    if session.get(ModelVersion, model_version) is not None:
        return True
    found = session.scalar(
        select(SweepRun.id).where(SweepRun.model_version == model_version).limit(1)
    )
    return found is not None


def serving_model(session: Session) -> ModelVersion | None:
    """The registry's serving model, if any (the partial unique index allows one)."""
    return session.scalar(select(ModelVersion).where(ModelVersion.role == ModelRole.SERVING))


def candidate_model(session: Session) -> ModelVersion | None:
    """The registered candidate, if any (one at a time)."""
    return session.scalar(select(ModelVersion).where(ModelVersion.role == ModelRole.CANDIDATE))


def model_entry(session: Session, version: str) -> ModelVersion | None:
    return session.get(ModelVersion, version)


def model_entries(session: Session) -> list[ModelVersion]:
    """Every registered version, the most recently registered first."""
    return list(
        session.scalars(
            select(ModelVersion).order_by(ModelVersion.registered_at.desc(), ModelVersion.version)
        )
    )


def promotion_history(session: Session, *, last: int) -> list[ModelPromotion]:
    """The ``last`` changes of the serving model, newest first."""
    return list(
        session.scalars(select(ModelPromotion).order_by(ModelPromotion.id.desc()).limit(last))
    )


def register_model(
    session: Session, *, version: str, file_name: str, figures: dict, by: str
) -> ModelVersion:
    """Record a new version as the candidate, in the caller's transaction (IntegrityError
    when another candidate is registered, or this version already is)."""
    entry = ModelVersion(
        version=version,
        file_name=file_name,
        role=ModelRole.CANDIDATE,
        registered_at=utcnow(),
        registered_by=by,
        figures=figures,
    )
    session.add(entry)
    session.flush()
    log.info("model %s registered as the candidate by %s", version, by)
    return entry


def store_model_file(session: Session, *, version: str, file_name: str, figures: dict) -> None:
    """Give a registered version the file it lacked (one the upgrade found only on rows),
    and the figures that file carries."""
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.version == version)
        .values(file_name=file_name, figures=figures)
    )


def retire_model(session: Session, *, version: str, by: str) -> None:
    """Set a candidate aside (it stays registered, ready to serve), in the caller's
    transaction."""
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.version == version, ModelVersion.role == ModelRole.CANDIDATE)
        .values(role=ModelRole.RETIRED, retired_at=utcnow(), retired_by=by)
    )
    log.info("candidate model %s retired by %s", version, by)


def make_serving(
    session: Session,
    *,
    version: str,
    by: str,
    action: str,
    reason: str | None = None,
    replaced: str | None = None,
) -> ModelPromotion:
    """Make the registered ``version`` the serving model, in the caller's transaction, which
    holds the sweep lock (``take_sweep_lock``) when a model serves already: the model serving
    until now is retired, and the change is logged. ``replaced``: what served before, when
    no model serves now (the first serving model of an upgraded install)."""
    now = utcnow()
    current = serving_model(session)
    if current is not None:
        current.role, current.retired_at, current.retired_by = ModelRole.RETIRED, now, by
        session.flush()  # first: the unique index allows one serving row at any moment
        replaced = current.version
    entry = session.get(ModelVersion, version)
    entry.role, entry.promoted_at, entry.promoted_by = ModelRole.SERVING, now, by
    entry.retired_at = entry.retired_by = None
    entry.reason = reason
    change = ModelPromotion(
        version=version, replaced=replaced, action=action, at=now, by=by, reason=reason
    )
    session.add(change)
    session.flush()
    log.info("model %s serves (%s by %s; it replaced %s)", version, action, by, replaced)
    return change


def first_serving(
    session: Session, *, version: str, file_name: str, figures: dict, by: str
) -> ModelPromotion:
    """No model serves yet: make ``version`` (the file at REFUND_SORTER_MODEL_PATH, stored as
    ``file_name``) serve, registering it first if the registry lacks it, in the caller's
    transaction. It replaces the last other version a sweep ran with, if any: what served
    before an upgrade. IntegrityError when another process did the same meanwhile."""
    entry = session.get(ModelVersion, version)
    if entry is None:
        entry = ModelVersion(
            version=version,
            file_name=file_name,
            role=ModelRole.RETIRED,  # serving below, once the row exists
            registered_at=utcnow(),
            registered_by=by,
            figures=figures,
        )
        session.add(entry)
        session.flush()
    elif entry.file_name is None:
        entry.file_name, entry.figures = file_name, figures
    before = session.scalar(
        select(SweepRun.model_version)
        .where(SweepRun.model_version != version)
        .order_by(SweepRun.id.desc())
        .limit(1)
    )
    return make_serving(
        session, version=version, by=by, action=PromotionAction.FIRST, replaced=before
    )


def rollback_target(session: Session) -> str | None:
    """The version that served before the serving model: the one the promotion that made it
    serve replaced (a rollback is not such a promotion: rolling back again goes one further
    back). None when nothing served before it."""
    serving = serving_model(session)
    if serving is None:
        return None
    return session.scalar(
        select(ModelPromotion.replaced)
        .where(
            ModelPromotion.version == serving.version,
            ModelPromotion.action.in_((PromotionAction.PROMOTE, PromotionAction.FIRST)),
        )
        .order_by(ModelPromotion.id.desc())
        .limit(1)
    )
