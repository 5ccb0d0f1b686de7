"""SQL tables: one row per sweep run, one row per image content and model version, one row
per review of a prediction; the review desk's claims on photos and its count of failed
logins; the review threshold set for each model version; the model registry (one row per
model version, and the log of the changes of the serving model); a candidate model's
answers from its shadow runs.

Statuses (and roles, actions) are StrEnums, and a CHECK constraint holds each column to its
enum's values. Tables are created and changed only by the Alembic migrations in
``migrations/``.
"""

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


def one_of(name: str, column: str, values: type[StrEnum]) -> CheckConstraint:
    """The CHECK constraint ``name`` that holds ``column`` to the values of ``values``: the
    database refuses a status no code knows, whoever writes it."""
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=name)


class SweepStatus(StrEnum):
    RUNNING = "running"  # enqueued work is still being classified
    FINISHED = "finished"
    SKIPPED = "skipped"  # another sweep was running: nothing was scanned
    ABANDONED = "abandoned"  # made no progress for too long; its leftovers were re-enqueued
    # One day of the returns counter's photos (its HTTP API, ``api``): rows grouped as a
    # night's are, but never ``running``, so never the sweep lock, never stalled or abandoned
    # as a night is, and left out of the nights' figures (those read ``finished`` nights).
    # finished_at is set once the day ended and its CSV was written.
    COUNTER = "counter"


class ItemStatus(StrEnum):
    QUEUED = "queued"
    OK = "ok"
    FAILED = "failed"
    # Could not be decoded while it was still being written (refund_sorter.arrival): left in
    # incoming/ untouched, for a later sweep to take once it is complete.
    DEFERRED = "deferred"


_NOT_FAILED_NOR_DEFERRED = f"status NOT IN ('{ItemStatus.FAILED}', '{ItemStatus.DEFERRED}')"


class SweepRun(Base):
    __tablename__ = "sweep_runs"
    __table_args__ = (
        # At most one running sweep, enforced by the database itself: this is the lock that
        # keeps a second beat (or a manual sweep) from starting while one is in progress.
        Index(
            "uq_sweep_runs_one_running",
            "status",
            unique=True,
            postgresql_where=text(f"status = '{SweepStatus.RUNNING}'"),
            sqlite_where=text(f"status = '{SweepStatus.RUNNING}'"),
        ),
        Index("ix_sweep_runs_started_at", "started_at"),
        # One counter day per day: its row is started_at, the day's first moment (UTC), so
        # that two API processes taking the day's first photo at once record one day.
        Index(
            "uq_sweep_runs_one_counter_day",
            "started_at",
            unique=True,
            postgresql_where=text(f"status = '{SweepStatus.COUNTER}'"),
            sqlite_where=text(f"status = '{SweepStatus.COUNTER}'"),
        ),
        one_of("ck_sweep_runs_status", "status", SweepStatus),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(16))  # beat, manual, local or counter
    model_version: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    found: Mapped[int] = mapped_column(Integer, default=0)
    enqueued: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # Found and left alone, known already: classified before by this model (a duplicate
    # content too), or failed before and still there. Named ``skipped`` until 0011.
    known: Mapped[int] = mapped_column(Integer, default=0)
    # Enqueued and not yet filed: classified (or failed) with its file where its row says.
    pending: Mapped[int] = mapped_column(Integer, default=0)
    # Left for later: still being written when read. Added to a table that held sweeps.
    deferred: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    message: Mapped[str | None] = mapped_column(Text)


class Prediction(Base):
    """One image content classified (or attempted) by one model version."""

    __tablename__ = "predictions"
    __table_args__ = (
        # The same image content is classified once per model version, never twice. Failed
        # and deferred rows are history (every unreadable upload keeps its own row, and so
        # does each sweep that found a file still being written), so they are exempt, and a
        # retried file gets a fresh row.
        Index(
            "uq_predictions_hash_model",
            "content_hash",
            "model_version",
            unique=True,
            postgresql_where=text(_NOT_FAILED_NOR_DEFERRED),
            sqlite_where=text(_NOT_FAILED_NOR_DEFERRED),
        ),
        # A night's photos by status, holding what the nightly figures count (the metrics
        # endpoint, drift, the accuracy report, the review backlog): PostgreSQL answers them
        # from the index alone, without reading the wide rows (paths, top_subs, errors).
        Index(
            "ix_predictions_sweep_status",
            "sweep_run_id",
            "status",
            postgresql_include=[
                "id",
                "main_category",
                "sub_category",
                "main_confidence",
                "sub_confidence",
                "needs_review",
                "audited",
            ],
        ),
        Index("ix_predictions_classified_at", "classified_at"),
        Index("ix_predictions_category", "main_category", "sub_category"),
        one_of("ck_predictions_status", "status", ItemStatus),
        Index("ix_predictions_file_name", "file_name"),
        Index(
            "ix_predictions_review",
            "classified_at",
            postgresql_where=text("needs_review"),
            sqlite_where=text("needs_review"),
        ),
        Index(
            "ix_predictions_audit",
            "sweep_run_id",
            postgresql_where=text("audited"),
            sqlite_where=text("audited"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    sweep_run_id: Mapped[int] = mapped_column(ForeignKey("sweep_runs.id"))
    status: Mapped[str] = mapped_column(String(16))
    file_name: Mapped[str] = mapped_column(Text)
    original_path: Mapped[str] = mapped_column(Text)
    final_path: Mapped[str | None] = mapped_column(Text)
    main_category: Mapped[str | None] = mapped_column(String(128))
    main_confidence: Mapped[float | None] = mapped_column(Float)
    sub_category: Mapped[str | None] = mapped_column(String(128))
    sub_confidence: Mapped[float | None] = mapped_column(Float)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    # The model's best sub categories, best first: [{"main": ..., "sub": ..., "p": ...}, ...]
    # (the first is the decision): what the review desk offers besides the decision.
    top_subs: Mapped[list[dict] | None] = mapped_column(JSON(none_as_null=True))
    # The gap between the two best sub probabilities (top_subs): the review queue's order.
    sub_margin: Mapped[float | None] = mapped_column(Float)
    # Drawn for the blind audit (refund_sorter.audit); with the audit rate and the review
    # threshold in force when it was classified (both can change between nights). Unset
    # for rows classified before they were recorded, and for those never classified.
    audited: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    audit_rate: Mapped[float | None] = mapped_column(Float)
    review_threshold: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    classified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Review(Base):
    """A person's decision on one prediction's category. A photo reviewed again gets another
    row: the newest (highest id) not undone is the answer, the others are its history."""

    __tablename__ = "reviews"
    __table_args__ = (
        Index("ix_reviews_prediction", "prediction_id", "id"),
        Index("ix_reviews_reviewed_at", "reviewed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"))
    reviewer: Mapped[str] = mapped_column(String(128))
    main_category: Mapped[str] = mapped_column(String(128))
    sub_category: Mapped[str] = mapped_column(String(128))
    reviewed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Decided without the model's answer shown (an audit, or a flagged photo drawn to be
    # shown blind): the promotion gate counts blind labels apart, since a reviewer who sees
    # the answer leans towards it.
    blind: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # When its reviewer took it back (the desk's undo): the row stays as history, and no
    # longer counts anywhere (queue, CSV, training set).
    undone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReviewClaim(Base):
    """A photo the review desk is showing one reviewer: nobody else is shown it, or may
    decide it, until ``expires_at``. One row per photo at most (the primary key), so taking
    a claim is one conditional insert-or-update that two desk processes cannot both win."""

    __tablename__ = "review_claims"

    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"), primary_key=True)
    reviewer: Mapped[str] = mapped_column(String(128))
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LoginFailures(Base):
    """Failed logins to the review desk, per account name (known or not) and per client
    address: kept in the database so that every desk process counts the same. A row whose
    quiet period has passed means no more than no row, and is deleted."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_last_failure_at", "last_failure_at"),)

    key: Mapped[str] = mapped_column(String(300), primary_key=True)  # account:NAME, address:IP
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReviewThreshold(Base):
    """The review threshold an operator set for one model version (`refund-sorter threshold
    --set`). Kept per version, so that a later model never inherits a value tuned for another;
    one row per version, changed in place (each change is logged)."""

    __tablename__ = "review_thresholds"

    model_version: Mapped[str] = mapped_column(String(32), primary_key=True)
    threshold: Mapped[float] = mapped_column(Float)
    set_by: Mapped[str] = mapped_column(String(128))
    set_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelRole(StrEnum):
    SERVING = "serving"  # the sweeps enqueue their photos for it
    CANDIDATE = "candidate"  # registered to be judged, not serving
    RETIRED = "retired"  # served once (or was a candidate); kept, ready to serve again


class ModelVersion(Base):
    """One model version the deployment knows (``refund-sorter model``): its file in the
    model store, its role, who registered, promoted and retired it, and the evaluation
    figures its checkpoint carries."""

    __tablename__ = "model_versions"
    __table_args__ = (
        # At most one serving model, enforced by the database itself: two promotions at once
        # cannot leave two models serving.
        Index(
            "uq_model_versions_one_serving",
            "role",
            unique=True,
            postgresql_where=text(f"role = '{ModelRole.SERVING}'"),
            sqlite_where=text(f"role = '{ModelRole.SERVING}'"),
        ),
        # One candidate at a time: what the candidate is judged on starts when it is
        # registered, and a second one would leave it unclear which was judged.
        Index(
            "uq_model_versions_one_candidate",
            "role",
            unique=True,
            postgresql_where=text(f"role = '{ModelRole.CANDIDATE}'"),
            sqlite_where=text(f"role = '{ModelRole.CANDIDATE}'"),
        ),
        one_of("ck_model_versions_role", "role", ModelRole),
    )

    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The file's name in the model store (REFUND_SORTER_MODEL_STORE). None for a version the
    # upgrade found on rows whose file was never stored: it cannot serve until registered.
    file_name: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    registered_by: Mapped[str] = mapped_column(String(128))
    # The last time it started serving, and the last time it stopped serving or was set
    # aside as a candidate (cleared when it serves again; model_promotions keeps them all).
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    promoted_by: Mapped[str | None] = mapped_column(String(128))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retired_by: Mapped[str | None] = mapped_column(String(128))
    # What the checkpoint says of itself: validation accuracy, photo counts, calibration
    # (registry.checkpoint_taxonomy.checkpoint_figures). None when the file is unknown.
    figures: Mapped[dict | None] = mapped_column(JSON(none_as_null=True))
    # Why it was promoted although the promotion's checks advised against it.
    reason: Mapped[str | None] = mapped_column(Text)


class PromotionAction(StrEnum):
    FIRST = "first"  # the first serving model: the file at REFUND_SORTER_MODEL_PATH
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class ModelPromotion(Base):
    """One change of the serving model, in order (the id only grows): which version began
    serving, which one it replaced, how, when and by whom. ``rollback`` reads it to find the
    version that served before."""

    __tablename__ = "model_promotions"
    __table_args__ = (
        Index("ix_model_promotions_version", "version", "id"),
        one_of("ck_model_promotions_action", "action", PromotionAction),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    version: Mapped[str] = mapped_column(ForeignKey("model_versions.version"))
    replaced: Mapped[str | None] = mapped_column(String(32))  # None: nothing served before
    action: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)


class ShadowPrediction(Base):
    """A candidate model's answer on a photo the serving model classified, from a shadow run
    (``worker.shadow``): one row per serving prediction and candidate version. It never moves
    a file nor enters the CSV or the review desk; ``refund-sorter model compare`` judges the
    candidate by these rows."""

    __tablename__ = "shadow_predictions"
    __table_args__ = (
        # One answer per photo and candidate: a redelivered batch writes none a second time.
        UniqueConstraint(
            "prediction_id", "model_version", name="uq_shadow_predictions_prediction_model"
        ),
        # The comparison reads one candidate's rows.
        Index("ix_shadow_predictions_model_version", "model_version"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # The serving model's row (status ok) for the same photo: its sweep, its answer.
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"))
    model_version: Mapped[str] = mapped_column(String(32))  # the candidate's
    main_category: Mapped[str] = mapped_column(String(128))
    main_confidence: Mapped[float] = mapped_column(Float)
    sub_category: Mapped[str] = mapped_column(String(128))
    sub_confidence: Mapped[float] = mapped_column(Float)
    # The candidate's flag at the review threshold in force for its version then
    # (refund_sorter.review_threshold), and that threshold.
    needs_review: Mapped[bool] = mapped_column(Boolean)
    review_threshold: Mapped[float] = mapped_column(Float)
    # The chance this photo had of being shadowed (refund_sorter.shadow): 1.0 for one the
    # serving model flagged or that was audited, else REFUND_SORTER_SHADOW_RATE then. The
    # comparison weights each row by its inverse.
    shadow_probability: Mapped[float] = mapped_column(Float)
    # Seconds of forward pass per photo on this row's batch: the candidate's (over the
    # photos shadowed) and the serving model's (over the batch's photos it classified).
    candidate_seconds: Mapped[float] = mapped_column(Float)
    serving_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A client of the returns counter's HTTP API (``refund-sorter api-token``): its name,
    recorded on every request it sends, and the SHA-256 of its token, never the token
    itself. A revoked token keeps its row, so the requests it sent still name it."""

    __tablename__ = "api_tokens"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CounterRequest(Base):
    """One photo a client sent to the returns counter, and the row that answered it: the
    row it made, or the one that already held its content (one row per image and model, so
    two clients sending the same photo share it). A client reads only the rows it sent."""

    __tablename__ = "counter_requests"
    __table_args__ = (Index("ix_counter_requests_prediction_token", "prediction_id", "token"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"))
    token: Mapped[str] = mapped_column(ForeignKey("api_tokens.name"))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
