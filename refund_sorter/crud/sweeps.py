"""Sweep runs: the one-running-sweep lock (taken by a sweep or a promotion), abandoning and
taking over a stalled sweep, and the reads of recent sweeps."""

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models import ItemStatus, Prediction, SweepRun, SweepStatus, utcnow
from refund_sorter.crud.common import as_utc
from refund_sorter.crud.model_versions import serving_model
from refund_sorter.messages import WorkItem
from refund_sorter.redact import redact


class NoServingModel(Exception):
    """The registry has no serving model: nothing can be enqueued."""


def begin_sweep(sessions: sessionmaker[Session], trigger: str) -> SweepRun:
    """Record a new sweep run: ``running`` if no other sweep runs, else ``skipped``; with
    the version of the model that serves at that moment.

    The partial unique index on running sweeps makes this race-free across machines. It is
    also what orders a sweep and a promotion (``take_sweep_lock``): the version is read
    only once the insert has the lock, in a statement of its own, so a promotion that
    committed while the insert waited for it is seen, and one that starts later waits for
    this sweep. NoServingModel when the registry has none.
    """
    now = utcnow()
    try:
        with sessions.begin() as session:
            run = SweepRun(status=SweepStatus.RUNNING, trigger=trigger, model_version="")
            session.add(run)
            session.flush()
            run.model_version = _serving_version(session)
        return run
    except IntegrityError:
        pass
    with sessions.begin() as session:
        other = running_sweep(session)
        since = f"{as_utc(other.started_at):%Y-%m-%d %H:%M} UTC" if other else "moments ago"
        run = SweepRun(
            status=SweepStatus.SKIPPED,
            trigger=trigger,
            model_version=_serving_version(session),
            finished_at=now,
            message=f"sweep {other.id if other else '?'} still running (started {since})",
        )
        session.add(run)
    return run


def _serving_version(session: Session) -> str:
    serving = serving_model(session)
    if serving is None:
        raise NoServingModel("the model registry has no serving model")
    return serving.version


class SweepRunning(Exception):
    """The sweep lock is held: a sweep runs."""


# The trigger of the row a promotion holds the sweep lock with; it never outlives its
# transaction.
PROMOTION_TRIGGER = "promotion"


def take_sweep_lock(session: Session) -> SweepRun:
    """Hold the sweep lock for the rest of the caller's transaction, the way a sweep holds
    it: a ``running`` row, which ``release_sweep_lock`` deletes before the commit, so nobody
    ever sees it. A sweep that starts meanwhile waits for the transaction (PostgreSQL waits
    on the unique index; SQLite has one writer). SweepRunning when one runs: the caller's
    transaction is then unusable, to be rolled back."""
    lock = SweepRun(status=SweepStatus.RUNNING, trigger=PROMOTION_TRIGGER, model_version="")
    session.add(lock)
    try:
        session.flush()
    except IntegrityError:
        raise SweepRunning() from None
    return lock


def release_sweep_lock(session: Session, lock: SweepRun) -> None:
    session.delete(lock)
    session.flush()


def abandon_sweeps(
    session: Session,
    *,
    message: str,
    sweep_id: int | None = None,
    stale_before: datetime | None = None,
) -> list[int]:
    """Mark running sweeps ``abandoned`` (this one, or those with no progress since
    ``stale_before``) and return their ids: a sweep nothing will finish must not hold the
    lock, so a crashed night does not block every night after it. Their queued rows stay
    queued, and the next sweep re-enqueues them. ``message`` is stored with any URL's
    password masked (it often carries the error that stopped the sweep)."""
    query = update(SweepRun).where(SweepRun.status == SweepStatus.RUNNING)
    if sweep_id is not None:
        query = query.where(SweepRun.id == sweep_id)
    if stale_before is not None:
        query = query.where(SweepRun.updated_at < stale_before)
    return list(
        session.scalars(
            query.values(
                status=SweepStatus.ABANDONED, finished_at=utcnow(), message=redact(message)
            ).returning(SweepRun.id)
        )
    )


def running_sweep(session: Session) -> SweepRun | None:
    """The sweep holding the lock, if any."""
    return session.scalar(select(SweepRun).where(SweepRun.status == SweepStatus.RUNNING))


def claim_stalled_sweep(
    session: Session, sweep_id: int, quiet_before: datetime
) -> list[WorkItem] | None:
    """Take over a running sweep with no progress since ``quiet_before``, to publish its queued
    rows again: ``None`` if it made progress or someone else claimed it first, else the work
    items of its queued rows.

    Claiming records progress (``updated_at``), so concurrent stall checks publish once and
    the next check waits a full stall period for the workers to take the new messages.
    """
    claimed = session.scalar(
        update(SweepRun)
        .where(
            SweepRun.id == sweep_id,
            SweepRun.status == SweepStatus.RUNNING,
            SweepRun.updated_at < quiet_before,
        )
        .values(updated_at=utcnow())
        .returning(SweepRun.id)
    )
    if claimed is None:
        return None
    rows = session.execute(
        select(Prediction.original_path, Prediction.content_hash, Prediction.model_version)
        .where(Prediction.sweep_run_id == sweep_id, Prediction.status == ItemStatus.QUEUED)
        .order_by(Prediction.id)
    )
    return [WorkItem(*row) for row in rows]


def postpone_stall_check(session: Session, items: Iterable[WorkItem], until: datetime) -> None:
    """Tell the stall check that the sweeps of these items' queued rows expect no progress
    before ``until``, when their retry is due: a worker holds a retry's message unacked, not
    in the queue, so the check would otherwise take the items for lost and publish them
    again. Sets ``updated_at`` ahead to ``until``, never back."""
    items = list(items)
    sweeps = select(Prediction.sweep_run_id).where(
        Prediction.status == ItemStatus.QUEUED,
        Prediction.content_hash.in_({it.content_hash for it in items}),
        Prediction.model_version.in_({it.model_version for it in items}),
    )
    session.execute(
        update(SweepRun)
        .where(
            SweepRun.status == SweepStatus.RUNNING,
            SweepRun.id.in_(sweeps),
            SweepRun.updated_at < until,
        )
        .values(updated_at=until)
    )


def get_sweep(session: Session, sweep_id: int) -> SweepRun | None:
    return session.get(SweepRun, sweep_id)


def recent_sweeps(session: Session, *, last: int) -> list[SweepRun]:
    """The ``last`` sweeps, newest first."""
    return list(session.scalars(select(SweepRun).order_by(SweepRun.id.desc()).limit(last)))


def deferred_files(session: Session, sweep_id: int, *, limit: int) -> list[tuple[str, str]]:
    """The first ``limit`` files this sweep left for later (still being written), each with
    why: (original path, error)."""
    rows = session.execute(
        select(Prediction.original_path, Prediction.error)
        .where(Prediction.sweep_run_id == sweep_id, Prediction.status == ItemStatus.DEFERRED)
        .order_by(Prediction.id)
        .limit(limit)
    )
    return [(path, error) for path, error in rows]
