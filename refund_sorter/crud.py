"""Every row the sweep and the review desk write, and the queries the CLI reads: the only
module that writes.

Functions take a session (or a session factory where they need transactions of their own)
and keyword arguments; the producer, the workers and local mode call them.
"""

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from pathlib import Path

from sqlalchemy import (
    Insert,
    Subquery,
    Table,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from models import (
    ItemStatus,
    LoginFailures,
    ModelPromotion,
    ModelRole,
    ModelVersion,
    Prediction,
    PromotionAction,
    Review,
    ReviewClaim,
    ReviewThreshold,
    ShadowPrediction,
    SweepRun,
    SweepStatus,
    utcnow,
)
from refund_sorter.messages import WorkItem
from refund_sorter.redact import redact

log = logging.getLogger(__name__)


def as_utc(value: datetime | None) -> datetime | None:
    """In UTC whatever the database returns: SQLite gives naive UTC values, PostgreSQL
    aware ones in the session's time zone."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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


def live_predictions(
    session: Session, hashes: Iterable[str], model_version: str, chunk: int = 500
) -> dict[str, Prediction]:
    """The queued or classified row of each content hash for this model (failed and deferred
    rows are history and never block a retry); failing that, a row still queued for another
    model by a sweep that was abandoned, which the new sweep takes over under its own model
    (``record_scan``), so that the photo is one model's work and no row is left queued for a
    model that no sweep enqueues any more."""
    hashes = list(hashes)
    found: dict[str, Prediction] = {}
    for start in range(0, len(hashes), chunk):
        rows = session.scalars(
            select(Prediction).where(
                Prediction.model_version == model_version,
                # As the unique index's predicate, so the index serves the query.
                Prediction.status.not_in((ItemStatus.FAILED, ItemStatus.DEFERRED)),
                Prediction.content_hash.in_(hashes[start : start + chunk]),
            )
        )
        found.update((row.content_hash, row) for row in rows)
        others = [h for h in hashes[start : start + chunk] if h not in found]
        if others:
            rows = session.scalars(
                select(Prediction)
                .where(
                    Prediction.model_version != model_version,
                    Prediction.status == ItemStatus.QUEUED,
                    Prediction.content_hash.in_(others),
                )
                .order_by(Prediction.id)
            )
            found.update((row.content_hash, row) for row in rows)  # the newest, if several
    return found


def queued_paths(session: Session, model_version: str, hashes: Iterable[str]) -> dict[str, str]:
    """The path each content hash is ``queued`` under for this model, in one query: what the
    producer enqueued, so a worker can refuse a task that names anything else. (The unique
    index allows one queued row per hash and model.)"""
    rows = session.execute(
        select(Prediction.content_hash, Prediction.original_path).where(
            Prediction.model_version == model_version,
            Prediction.status == ItemStatus.QUEUED,
            Prediction.content_hash.in_(set(hashes)),
        )
    )
    return {content_hash: path for content_hash, path in rows}


@dataclass(frozen=True)
class ScannedFile:
    """A file the producer found, as it goes into the table."""

    path: Path
    content_hash: str


@dataclass(frozen=True)
class Unreadable(ScannedFile):
    """A file the scan found that no worker gets: not an image (``failed``), or one still
    being written (``deferred``, left where it is for a later sweep)."""

    error: str
    final_path: Path | None  # None: it stays where it is
    status: str = ItemStatus.FAILED  # or ItemStatus.DEFERRED


def record_scan(
    session: Session,
    *,
    sweep_id: int,
    model_version: str,
    found: int,
    unreadable: list[Unreadable],
    queue: list[ScannedFile],
    live: dict[str, Prediction],
    known: int,
    refiled: list[tuple[Prediction, Path]],
) -> SweepRun:
    """Write what a sweep's scan decided, in the caller's transaction, and its counters.

    Each unreadable file gets a ``failed`` or ``deferred`` row of its own; each image to
    classify gets a ``queued`` row, new or (``live``) left queued by an abandoned sweep and
    taken over. ``refiled``: classified rows whose file was found still in ``incoming/`` and
    is about to be moved where their row will now say (their earlier move failed). The sweep
    stays ``running`` even with nothing to classify: ``record_filed`` ends it once its files
    are moved.
    """
    now = utcnow()

    def new_row(f: ScannedFile) -> dict:
        settled = isinstance(f, Unreadable)
        return {
            "content_hash": f.content_hash,
            "model_version": model_version,
            "sweep_run_id": sweep_id,
            "status": f.status if settled else ItemStatus.QUEUED,
            "file_name": f.path.name,
            "original_path": str(f.path),
            "final_path": str(f.final_path) if settled and f.final_path else None,
            "error": f.error if settled else None,
            "created_at": now,
            "classified_at": now if settled else None,
        }

    # New rows go in as plain dicts, a thousand per statement: ORM objects for a night of
    # 100,000 photos would sit in the session's identity map until the commit, and one
    # statement for them all would hold all their parameters at once.
    rows = map(
        new_row,
        # every unreadable file; a new image, or a retry of one that failed
        chain(unreadable, (f for f in queue if f.content_hash not in live)),
    )
    while chunk := list(islice(rows, 1000)):
        session.execute(insert(Prediction), chunk)
    for f in queue:
        if (row := live.get(f.content_hash)) is not None:  # left by an abandoned sweep
            row.sweep_run_id, row.created_at = sweep_id, now
            row.file_name, row.original_path = f.path.name, str(f.path)
            row.model_version = model_version  # perhaps queued for the model served before
    for row, dest in refiled:  # an error it holds said why it was left in incoming/
        row.final_path, row.error = str(dest), None
    run = session.get(SweepRun, sweep_id)
    statuses = Counter(f.status for f in unreadable)
    run.found, run.enqueued, run.known = found, len(queue), known
    run.failed, run.deferred = statuses[ItemStatus.FAILED], statuses[ItemStatus.DEFERRED]
    run.pending = len(queue)
    run.updated_at = now
    return run


def failures_left_in_place(
    session: Session, paths: Iterable[Path], chunk: int = 500
) -> set[tuple[str, str]]:
    """The (original path, content hash) of failed rows whose file was left where it was,
    among ``paths``: a later sweep that finds the same file there records it no more."""
    paths = sorted(set(paths))
    found: set[tuple[str, str]] = set()
    for start in range(0, len(paths), chunk):
        some = paths[start : start + chunk]
        rows = session.execute(
            select(Prediction.original_path, Prediction.content_hash).where(
                Prediction.file_name.in_({p.name for p in some}),  # indexed; the path is not
                Prediction.original_path.in_([str(p) for p in some]),
                Prediction.status == ItemStatus.FAILED,
                Prediction.final_path.is_(None),
            )
        )
        found.update((path, content_hash) for path, content_hash in rows)
    return found


@dataclass(frozen=True)
class Unmoved:
    """A file still where it was, although the committed row (of sweep ``sweep_id`` for the
    file found at ``original_path``) says it went to ``final_path``."""

    sweep_id: int
    original_path: str
    final_path: str
    reason: str


def record_unmoved(session: Session, unmoved: Iterable[Unmoved]) -> None:
    """Correct the rows of files whose move failed after the commit, ``ok`` and ``failed``
    alike: no final path, and why the file is still where it was (in ``error``, after the
    reason a failed row has). A row that no longer names that destination is left alone: a
    later sweep has filed the file meanwhile."""
    for u in unmoved:
        note = f"left where it is: {u.reason}"
        session.execute(
            update(Prediction)
            .where(
                Prediction.sweep_run_id == u.sweep_id,
                Prediction.original_path == u.original_path,
                Prediction.final_path == u.final_path,
            )
            .values(
                final_path=None,
                error=case(
                    (Prediction.error.is_(None), note), else_=Prediction.error + f"; {note}"
                ),
            )
        )


def record_filed(
    session: Session, *, filed: dict[int, int], unmoved: Iterable[Unmoved] = ()
) -> list[int]:
    """After a batch's files were moved: correct the rows of the files that stayed
    (``record_unmoved``), count ``filed[sweep]`` more of each sweep's photos done, and finish
    each running sweep that has none left; returns the sweeps finished.

    A photo counts as pending until its file is where its row says, so the process that files
    a night's last photos finishes the night, whichever it is, and its CSV tells where every
    file is. A sweep with nothing to classify is finished here too, once the scan's moves are
    done (``filed`` 0): until then it holds the lock, so the next sweep never lists files
    still being moved."""
    record_unmoved(session, unmoved)
    now = utcnow()
    finished = []
    for sweep_id, n in sorted(filed.items()):
        # Increments, not recomputed totals: concurrent workers serialise on this row.
        left = SweepRun.pending - n
        status = session.scalar(
            update(SweepRun)
            .where(SweepRun.id == sweep_id, SweepRun.status == SweepStatus.RUNNING)
            .values(
                pending=left,
                updated_at=now,
                status=case((left <= 0, SweepStatus.FINISHED), else_=SweepRun.status),
                finished_at=case((left <= 0, now), else_=SweepRun.finished_at),
            )
            .returning(SweepRun.status)
        )
        if status == SweepStatus.FINISHED:
            finished.append(sweep_id)
    return finished


def unfiled_rows(session: Session, sweep_id: int) -> list[tuple[str, str]]:
    """(original path, final path) of each row of the sweep that names where its file goes:
    what a process stopped between its commit and its moves may have left unmoved."""
    rows = session.execute(
        select(Prediction.original_path, Prediction.final_path)
        .where(Prediction.sweep_run_id == sweep_id, Prediction.final_path.is_not(None))
        .order_by(Prediction.id)
    )
    return [(original, final) for original, final in rows]


@dataclass
class ItemResult:
    content_hash: str
    model_version: str
    status: str  # ItemStatus.OK, ItemStatus.FAILED or ItemStatus.DEFERRED
    final_path: str | None
    main_category: str | None = None
    main_confidence: float | None = None
    sub_category: str | None = None
    sub_confidence: float | None = None
    needs_review: bool = False
    error: str | None = None
    top_subs: tuple[tuple[str, str, float], ...] = ()  # (main, sub, probability), best first
    sub_margin: float | None = None  # the gap between the two best of top_subs
    audited: bool = False  # drawn for the blind audit (refund_sorter.audit)
    audit_rate: float | None = None  # in force when it was classified
    review_threshold: float | None = None  # in force when it was classified


def record_failures(session: Session, items: list[WorkItem], error: str) -> list[int]:
    """Mark the queued rows of ``items`` ``failed`` with ``error``, their files left where they
    are (no final path), so the next sweep tries them again; returns the sweeps this
    finished. Nothing is moved, so they are filed at once (``record_filed``)."""
    stored = record_results(
        session,
        [
            ItemResult(it.content_hash, it.model_version, ItemStatus.FAILED, None, error=error)
            for it in items
        ],
    )
    return record_filed(session, filed=Counter(stored.values()))


_predictions = Prediction.__table__
_STORE_RESULT = (
    _predictions.update()
    .where(
        _predictions.c.content_hash == bindparam("b_hash"),
        _predictions.c.model_version == bindparam("b_version"),
        _predictions.c.status == ItemStatus.QUEUED,
    )
    .values(
        {
            column: bindparam(f"v_{column}")
            for column in (
                "status",
                "final_path",
                "main_category",
                "main_confidence",
                "sub_category",
                "sub_confidence",
                "needs_review",
                "top_subs",
                "sub_margin",
                "audited",
                "audit_rate",
                "review_threshold",
                "error",
                "classified_at",
            )
        }
    )
    .returning(_predictions.c.sweep_run_id)
)


def record_results(session: Session, results: list[ItemResult]) -> dict[str, int]:
    """Store a batch of results and count them in their sweeps, in the caller's transaction.

    Only rows still ``queued`` are updated, so a task delivered twice cannot overwrite or
    double-count a result. Returns the hashes actually stored, each with its row's sweep.
    They stay pending in their sweep until their files are moved (``record_filed``).
    """
    now = utcnow()
    stored: dict[str, int] = {}
    per_sweep: dict[int, Counter] = {}
    # One Core statement for every row (compiled once and cached): the ORM's bulk-update
    # machinery cost more than the update itself, once per image.
    connection = session.connection()
    for r in results:
        sweep_id = connection.execute(
            _STORE_RESULT,
            {
                "b_hash": r.content_hash,
                "b_version": r.model_version,
                "v_status": r.status,
                "v_final_path": r.final_path,
                "v_main_category": r.main_category,
                "v_main_confidence": r.main_confidence,
                "v_sub_category": r.sub_category,
                "v_sub_confidence": r.sub_confidence,
                "v_needs_review": r.needs_review,
                "v_top_subs": [{"main": m, "sub": s, "p": round(p, 4)} for m, s, p in r.top_subs]
                or None,
                "v_sub_margin": r.sub_margin,
                "v_audited": r.audited,
                "v_audit_rate": r.audit_rate,
                "v_review_threshold": r.review_threshold,
                "v_error": r.error,
                "v_classified_at": now,
            },
        ).scalar()
        if sweep_id is None:
            continue
        stored[r.content_hash] = sweep_id
        per_sweep.setdefault(sweep_id, Counter())[r.status] += 1

    for sweep_id, counts in sorted(per_sweep.items()):
        # Increments, not recomputed totals: concurrent workers serialise on this row.
        session.execute(
            update(SweepRun)
            .where(SweepRun.id == sweep_id)
            .values(
                succeeded=SweepRun.succeeded + counts[ItemStatus.OK],
                failed=SweepRun.failed + counts[ItemStatus.FAILED],
                deferred=SweepRun.deferred + counts[ItemStatus.DEFERRED],
                updated_at=now,
            )
        )
    return stored


def record_review(
    session: Session, *, prediction_id: int, reviewer: str, main_category: str, sub_category: str
) -> Review | None:
    """Record a reviewer's decision on a classified photo, in the caller's transaction; None
    when no classified row has this id. Earlier decisions stay as history: the newest one
    is the answer (``latest_reviews``). The caller checks the category against the model's
    taxonomy."""
    prediction = session.get(Prediction, prediction_id)
    if prediction is None or prediction.status != ItemStatus.OK:
        return None
    review = Review(
        prediction_id=prediction_id,
        reviewer=reviewer,
        main_category=main_category,
        sub_category=sub_category,
        reviewed_at=utcnow(),
    )
    session.add(review)
    session.flush()
    return review


def undo_last_review(session: Session, *, reviewer: str) -> Review | None:
    """Take back ``reviewer``'s newest decision not yet undone, in the caller's transaction:
    the row stays, marked ``undone_at``, and no longer counts. None when there is none (or a
    concurrent undo took the same one: a double press undoes one decision, not two)."""
    newest = (
        select(func.max(Review.id))
        .where(Review.reviewer == reviewer, Review.undone_at.is_(None))
        .scalar_subquery()
    )
    undone = session.scalar(
        update(Review)
        .where(Review.id == newest, Review.undone_at.is_(None))
        .values(undone_at=utcnow())
        .returning(Review.id)
    )
    return None if undone is None else session.get(Review, undone)


def latest_reviews() -> Subquery:
    """The newest review not undone of each reviewed prediction (the answer that counts), to
    join on ``prediction_id``. Newest by id, which only grows, rather than by a clock."""
    # "No newer one", an anti-join along ix_reviews_prediction: a third of the time of
    # matching each review against its prediction's max(id), computed over every review.
    newer = aliased(Review)
    superseded = exists().where(
        newer.prediction_id == Review.prediction_id,
        newer.undone_at.is_(None),
        newer.id > Review.id,
    )
    return select(Review).where(Review.undone_at.is_(None), ~superseded).subquery("latest_review")


def _upsert(session: Session, table: Table) -> Insert:
    """An INSERT that takes ``on_conflict_do_update``, in the session's SQL dialect."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def claim_photo(
    session: Session, *, prediction_id: int, reviewer: str, seconds: float
) -> ReviewClaim | None:
    """Hold a photo for ``reviewer`` for ``seconds`` from now, in the caller's transaction:
    the claim, or None when another reviewer's claim on it still lives.

    One statement, an insert that on conflict updates only an expired claim or the
    reviewer's own: of two desk processes claiming the same photo at once, PostgreSQL makes
    the second wait for the first and then finds the claim live, so only one wins (SQLite
    runs one writer at a time)."""
    now = utcnow()
    claims = ReviewClaim.__table__
    statement = _upsert(session, claims).values(
        prediction_id=prediction_id,
        reviewer=reviewer,
        claimed_at=now,
        expires_at=now + timedelta(seconds=seconds),
    )
    taken = session.execute(
        statement.on_conflict_do_update(
            index_elements=[claims.c.prediction_id],
            set_={
                "reviewer": statement.excluded.reviewer,
                "claimed_at": statement.excluded.claimed_at,
                "expires_at": statement.excluded.expires_at,
            },
            where=or_(claims.c.expires_at <= now, claims.c.reviewer == reviewer),
        ).returning(claims.c.prediction_id)
    ).scalar()
    if taken is None:
        return None
    return session.get(ReviewClaim, prediction_id, populate_existing=True)


def release_claims(session: Session, *, reviewer: str, keep: int | None = None) -> None:
    """Let go of ``reviewer``'s claims (but the one on ``keep``): a reviewer holds the photo
    the desk shows them, and no other."""
    query = delete(ReviewClaim).where(ReviewClaim.reviewer == reviewer)
    if keep is not None:
        query = query.where(ReviewClaim.prediction_id != keep)
    session.execute(query)


def count_login_failure(session: Session, *, key: str, quiet_before: datetime) -> int:
    """Count one failed login for ``key`` (``account:NAME`` or ``address:IP``), in the
    caller's transaction, and return its failures in a row. Rows quiet since before
    ``quiet_before`` (no failure and no lock since) are forgotten first, this one included:
    its count starts again at 1."""
    session.execute(
        delete(LoginFailures).where(
            LoginFailures.last_failure_at < quiet_before,
            or_(LoginFailures.locked_until.is_(None), LoginFailures.locked_until < quiet_before),
        )
    )
    now = utcnow()
    failures = LoginFailures.__table__
    statement = _upsert(session, failures).values(key=key, failures=1, last_failure_at=now)
    return session.execute(
        statement.on_conflict_do_update(
            index_elements=[failures.c.key],
            set_={"failures": failures.c.failures + 1, "last_failure_at": now},
        ).returning(failures.c.failures)
    ).scalar_one()


def lock_login(session: Session, *, key: str, until: datetime) -> None:
    """Refuse logins for ``key`` until ``until`` (the row ``count_login_failure`` made)."""
    session.execute(
        update(LoginFailures).where(LoginFailures.key == key).values(locked_until=until)
    )


def forget_login_failures(session: Session, *, key: str) -> None:
    """A successful login: ``key``'s failures no longer count."""
    session.execute(delete(LoginFailures).where(LoginFailures.key == key))


def review_threshold_set(session: Session, *, model_version: str) -> ReviewThreshold | None:
    """The review threshold set for ``model_version`` (``refund-sorter threshold --set``),
    or None: one query by primary key, cheap enough for every batch."""
    return session.get(ReviewThreshold, model_version)


def set_review_threshold(
    session: Session, *, model_version: str, threshold: float, set_by: str
) -> ReviewThreshold:
    """Set ``model_version``'s review threshold, in place of any it had, in the caller's
    transaction: one insert-or-update, so two operators setting it at once leave one row."""
    table = ReviewThreshold.__table__
    statement = _upsert(session, table).values(
        model_version=model_version, threshold=threshold, set_by=set_by, set_at=utcnow()
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c.model_version],
            set_={c: statement.excluded[c] for c in ("threshold", "set_by", "set_at")},
        )
    )
    log.info("review threshold of model %s set to %s by %s", model_version, threshold, set_by)
    return session.get(ReviewThreshold, model_version, populate_existing=True)


def clear_review_threshold(session: Session, *, model_version: str, cleared_by: str) -> None:
    """Remove the review threshold set for ``model_version``, in the caller's transaction."""
    session.execute(delete(ReviewThreshold).where(ReviewThreshold.model_version == model_version))
    log.info("review threshold of model %s cleared by %s", model_version, cleared_by)


def model_version_known(session: Session, *, model_version: str) -> bool:
    """Whether the registry knows ``model_version`` or a sweep ran with it (so a photo was,
    or is to be, classified by it)."""
    if session.get(ModelVersion, model_version) is not None:
        return True
    found = session.scalar(
        select(SweepRun.id).where(SweepRun.model_version == model_version).limit(1)
    )
    return found is not None


# ----------------------------------------------------------------------- the model registry


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


@dataclass(frozen=True)
class ShadowAnswer:
    """A candidate model's answer on one photo of a batch, and the chance the photo had of
    being shadowed (``refund_sorter.shadow``)."""

    content_hash: str
    main_category: str
    main_confidence: float
    sub_category: str
    sub_confidence: float
    needs_review: bool
    shadow_probability: float


def record_shadow(
    session: Session,
    *,
    serving_version: str,
    candidate_version: str,
    answers: list[ShadowAnswer],
    review_threshold: float,
    candidate_seconds: float,
    serving_seconds: float,
) -> int:
    """Store a shadow run's answers, in the caller's transaction (a batch's shadow run has
    its own, after the batch's): each one beside the serving model's ``ok`` row of its photo.
    A photo this candidate answered already (a redelivered task) keeps its first answer.
    Returns the rows written."""
    if not answers:
        return 0
    ids = dict(
        session.execute(
            select(Prediction.content_hash, Prediction.id).where(
                Prediction.model_version == serving_version,
                Prediction.status == ItemStatus.OK,
                # As the unique index's predicate, so the index serves the query.
                Prediction.status.not_in((ItemStatus.FAILED, ItemStatus.DEFERRED)),
                Prediction.content_hash.in_({a.content_hash for a in answers}),
            )
        ).all()
    )
    now = utcnow()
    rows = [
        {
            "prediction_id": ids[a.content_hash],
            "model_version": candidate_version,
            "main_category": a.main_category,
            "main_confidence": a.main_confidence,
            "sub_category": a.sub_category,
            "sub_confidence": a.sub_confidence,
            "needs_review": a.needs_review,
            "review_threshold": review_threshold,
            "shadow_probability": a.shadow_probability,
            "candidate_seconds": candidate_seconds,
            "serving_seconds": serving_seconds,
            "created_at": now,
        }
        for a in answers
        if a.content_hash in ids
    ]
    if not rows:
        return 0
    table = ShadowPrediction.__table__
    written = session.scalars(
        _upsert(session, table)
        .values(rows)
        .on_conflict_do_nothing(index_elements=[table.c.prediction_id, table.c.model_version])
        .returning(table.c.id)
    )
    return len(written.all())
