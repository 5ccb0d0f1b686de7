"""The returns counter's rows: its API tokens, its days (sweep runs of status ``counter``),
the photos it records, the requests each token sent, and the counter rows the stall check
publishes again.

A counter photo is a ``predictions`` row like a night's, under the day's counter run: the
same one-result-per-image rule, the same ``record_results`` when a worker classifies it.
What differs is who waits for it (a client, not a night): a counter day is never
``running``, so it never holds the sweep lock and the night's stall check never sees it.
Its rows' ``created_at`` says when they were last handed to the workers (the stall check
sets it when it publishes one again); when each client asked is in ``counter_requests``.
"""

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from sqlalchemy import exists, select, text, update
from sqlalchemy.orm import Session

from models import ApiToken, CounterRequest, ItemStatus, Prediction, SweepRun, SweepStatus, utcnow
from refund_sorter.crud.common import upsert
from refund_sorter.messages import WorkItem

# The trigger of a counter day's run.
COUNTER_TRIGGER = "counter"

# ------------------------------------------------------------------------------- API tokens


class TokenNameTaken(Exception):
    """A token with this name exists and is not revoked."""


def create_api_token(session: Session, *, name: str, token_hash: str) -> None:
    """Record a token by ``name`` and the hash of its secret; a revoked token's name may be
    given again (its requests keep naming it). TokenNameTaken when a live token has it."""
    row = session.get(ApiToken, name, with_for_update=True)
    if row is not None and row.revoked_at is None:
        raise TokenNameTaken(name)
    if row is None:
        session.add(ApiToken(name=name, token_hash=token_hash, created_at=utcnow()))
    else:
        row.token_hash, row.created_at, row.revoked_at = token_hash, utcnow(), None
    session.flush()


def api_tokens(session: Session) -> list[ApiToken]:
    """Every token, revoked ones too, by name."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))


def revoke_api_token(session: Session, *, name: str) -> bool:
    """Revoke the live token ``name`` at once; False when there is none."""
    revoked = session.scalar(
        update(ApiToken)
        .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .returning(ApiToken.name)
    )
    return revoked is not None


def api_token_name(session: Session, *, token_hash: str) -> str | None:
    """The name of the live token whose secret hashes to ``token_hash``, if any."""
    return session.scalar(
        select(ApiToken.name).where(
            ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None)
        )
    )


# ------------------------------------------------------------------------------- its photos


def day_start(moment: datetime) -> datetime:
    """The first moment (UTC) of the counter day ``moment`` falls on: days are UTC days, as
    the nights' CSV files are dated."""
    return datetime.combine(moment.astimezone(UTC).date(), time.min, tzinfo=UTC)


def counter_day(session: Session, *, model_version: str, now: datetime | None = None) -> int:
    """The id of today's counter run, recorded by the first photo of the day. Two processes
    recording it at once record one (its partial unique index); ``model_version`` is the
    model that served when the day began (each photo's row says its own)."""
    now = now or utcnow()
    start = day_start(now)
    today = select(SweepRun.id).where(
        SweepRun.status == SweepStatus.COUNTER, SweepRun.started_at == start
    )
    # Looked up first: an INSERT ... ON CONFLICT waits for every transaction that is
    # changing the day's row (each photo's count), so that every request queued behind
    # the last one's commit.
    if (day := session.scalar(today)) is not None:
        return day
    runs = SweepRun.__table__
    session.execute(
        upsert(session, runs)
        .values(
            status=SweepStatus.COUNTER,
            trigger=COUNTER_TRIGGER,
            model_version=model_version,
            started_at=start,
            updated_at=now,
            found=0,
            enqueued=0,
            succeeded=0,
            failed=0,
            known=0,
            pending=0,
            deferred=0,
        )
        .on_conflict_do_nothing(
            index_elements=[runs.c.started_at],
            # A literal, not a bound parameter: PostgreSQL matches the partial index by its
            # predicate when it plans, and a generic plan (a statement psycopg prepared after
            # five runs on one connection) keeps a parameter unknown, so it matched nothing
            # ("no unique or exclusion constraint matching the ON CONFLICT specification").
            index_where=text(f"status = '{SweepStatus.COUNTER.value}'"),
        )
    )
    return session.scalar(today)


def live_photo(session: Session, *, content_hash: str, model_version: str) -> Prediction | None:
    """The queued or classified row of this content for this model, night's or counter's:
    what a counter photo is answered from rather than classified again."""
    return session.scalar(
        select(Prediction).where(
            Prediction.content_hash == content_hash,
            Prediction.model_version == model_version,
            # As the unique index's predicate, so the index serves the query.
            Prediction.status.not_in((ItemStatus.FAILED, ItemStatus.DEFERRED)),
        )
    )


def queued_at_counter(session: Session, *, content_hash: str) -> Prediction | None:
    """A counter row of this content still queued for whatever model: one sent just before
    a promotion is answered by the model it was queued for, as a night's photo is, rather
    than queued again under the same file for the new one (the first worker to file it
    would leave the second without its file)."""
    days = select(SweepRun.id).where(SweepRun.status == SweepStatus.COUNTER)
    return session.scalar(
        select(Prediction)
        .where(
            Prediction.content_hash == content_hash,
            Prediction.status == ItemStatus.QUEUED,
            Prediction.sweep_run_id.in_(days),
        )
        .order_by(Prediction.id.desc())
        .limit(1)
    )


def record_counter_photo(
    session: Session,
    *,
    day_id: int,
    path: Path,
    content_hash: str,
    model_version: str,
    token: str,
) -> Prediction:
    """A ``queued`` row of day ``day_id`` for a photo the client ``token`` sent and the
    counter stored at ``path``, in the caller's transaction (``count_counter_photo`` counts
    it in its day). The unique index refuses a second live row for the same content and
    model (IntegrityError: another request recorded it meanwhile)."""
    row = Prediction(
        content_hash=content_hash,
        model_version=model_version,
        sweep_run_id=day_id,
        status=ItemStatus.QUEUED,
        file_name=path.name,
        original_path=str(path),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    record_counter_request(session, prediction_id=row.id, token=token)
    return row


def count_counter_photo(session: Session, *, day_id: int) -> None:
    """Count a photo recorded by ``record_counter_photo`` in its day: the last statement
    before the caller commits, for it locks the day's row, which every other photo of the
    day waits for, until the commit."""
    session.execute(
        update(SweepRun)
        .where(SweepRun.id == day_id)
        .values(found=SweepRun.found + 1, enqueued=SweepRun.enqueued + 1, updated_at=utcnow())
    )


def record_counter_request(session: Session, *, prediction_id: int, token: str) -> None:
    """Record that the client ``token`` sent the photo of row ``prediction_id``."""
    session.add(CounterRequest(prediction_id=prediction_id, token=token, received_at=utcnow()))
    session.flush()


def counter_days_among(session: Session, sweep_ids: set[int]) -> set[int]:
    """Which of these sweep runs are counter days."""
    if not sweep_ids:
        return set()
    return set(
        session.scalars(
            select(SweepRun.id).where(
                SweepRun.id.in_(sweep_ids), SweepRun.status == SweepStatus.COUNTER
            )
        )
    )


def is_counter_day(session: Session, sweep_id: int) -> bool:
    return session.scalar(select(SweepRun.status).where(SweepRun.id == sweep_id)) == (
        SweepStatus.COUNTER
    )


def photo_sent_by(session: Session, *, prediction_id: int, token: str) -> Prediction | None:
    """Row ``prediction_id`` if the client ``token`` sent its photo, else None: a client
    reads only what it sent, and cannot tell another's row from one that does not exist."""
    sent = exists().where(
        CounterRequest.prediction_id == prediction_id, CounterRequest.token == token
    )
    return session.scalar(select(Prediction).where(Prediction.id == prediction_id, sent))


# ------------------------------------------------------------------------ the stall check


def claim_stalled_counter_photos(session: Session, *, quiet_before: datetime) -> list[WorkItem]:
    """The counter's rows still queued since before ``quiet_before``, claimed to be
    published again: their ``created_at`` set to now, so that the next check waits a full
    stall period for them, and two checks at once publish each once."""
    days = select(SweepRun.id).where(SweepRun.status == SweepStatus.COUNTER)
    rows = session.execute(
        update(Prediction)
        .where(
            Prediction.status == ItemStatus.QUEUED,
            Prediction.sweep_run_id.in_(days),
            Prediction.created_at < quiet_before,
        )
        .values(created_at=utcnow())
        .returning(Prediction.original_path, Prediction.content_hash, Prediction.model_version)
    )
    return [WorkItem(*row) for row in rows]


def postpone_counter_check(session: Session, items: list[WorkItem], until: datetime) -> None:
    """``postpone_stall_check`` for the counter's rows among ``items``: no publishing again
    before ``until``, when their retry is due."""
    days = select(SweepRun.id).where(SweepRun.status == SweepStatus.COUNTER)
    session.execute(
        update(Prediction)
        .where(
            Prediction.status == ItemStatus.QUEUED,
            Prediction.sweep_run_id.in_(days),
            Prediction.content_hash.in_({it.content_hash for it in items}),
            Prediction.model_version.in_({it.model_version for it in items}),
            Prediction.created_at < until,
        )
        .values(created_at=until)
    )


def close_counter_days(session: Session, *, now: datetime, stale_hours: float) -> list[int]:
    """Close the counter days that ended (before today) with none of their photos still
    queued, or that ended more than ``stale_hours`` ago whatever is left: ``finished_at``
    set, so that their CSV is written once. Returns them."""
    today = day_start(now)
    queued = exists().where(
        Prediction.sweep_run_id == SweepRun.id, Prediction.status == ItemStatus.QUEUED
    )
    return list(
        session.scalars(
            update(SweepRun)
            .where(
                SweepRun.status == SweepStatus.COUNTER,
                SweepRun.finished_at.is_(None),
                SweepRun.started_at < today,
                ~queued | (SweepRun.started_at < now - timedelta(days=1, hours=stale_hours)),
            )
            .values(finished_at=now)
            .returning(SweepRun.id)
        )
    )
