"""A night's photos: the rows a scan records, the results a batch stores, and the files filed
after the commit (a photo is pending in its sweep until its file is where its row says)."""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from itertools import chain, islice
from pathlib import Path

from sqlalchemy import (
    JSON,
    String,
    Update,
    bindparam,
    case,
    column,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.orm import Session

from models import ItemStatus, Prediction, SweepRun, SweepStatus, utcnow
from refund_sorter.messages import WorkItem


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
    still being moved.

    With nothing unmoved and one sweep, this is one statement: ``refund_sorter.filing``
    lets it commit on its own."""
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


def record_failures(session: Session, items: list[WorkItem], error: str) -> dict[str, int]:
    """Mark the queued rows of ``items`` ``failed`` with ``error``, their files left where they
    are (no final path), so the next sweep tries them again; like ``record_results``."""
    return record_results(
        session,
        [
            ItemResult(it.content_hash, it.model_version, ItemStatus.FAILED, None, error=error)
            for it in items
        ],
    )


_predictions = Prediction.__table__

# What a result stores in its row, besides the time it was classified (the batch's own).
_RESULT_COLUMNS = (
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
)


def record_results(session: Session, results: list[ItemResult]) -> dict[str, int]:
    """Store a batch of results and count them in their sweeps, in the caller's transaction.

    Only rows still ``queued`` are updated, so a task delivered twice cannot overwrite or
    double-count a result. Returns the hashes actually stored, each with its row's sweep.
    They stay pending in their sweep until their files are moved (``record_filed``).
    """
    now = utcnow()
    # The first result for an image and model is the one stored, as if each were stored in
    # turn: a later one would find the row no longer queued.
    first: dict[tuple[str, str], ItemResult] = {}
    for r in results:
        first.setdefault((r.content_hash, r.model_version), r)
    rows = [
        {
            "b_hash": r.content_hash,
            "b_version": r.model_version,
            "status": r.status,
            "final_path": r.final_path,
            "main_category": r.main_category,
            "main_confidence": r.main_confidence,
            "sub_category": r.sub_category,
            "sub_confidence": r.sub_confidence,
            "needs_review": r.needs_review,
            "top_subs": [{"main": m, "sub": s, "p": round(p, 4)} for m, s, p in r.top_subs] or None,
            "sub_margin": r.sub_margin,
            "audited": r.audited,
            "audit_rate": r.audit_rate,
            "review_threshold": r.review_threshold,
            "error": r.error,
        }
        for r in first.values()
    ]
    sweep_of: dict[tuple[str, str], int] = {}
    if rows:
        statement = _store_results(session.get_bind().dialect.name)
        returned = session.execute(statement, {"rows": rows, "classified_at": now})
        sweep_of = {(h, version): sweep_id for h, version, sweep_id in returned}

    stored: dict[str, int] = {}
    per_sweep: dict[int, Counter] = {}
    for key, r in first.items():
        if (sweep_id := sweep_of.get(key)) is None:
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


@cache
def _store_results(dialect: str) -> Update:
    """One ``UPDATE ... FROM ... RETURNING`` for a batch's results (``rows``: one JSON array
    of them, at most one per image and model; ``classified_at``): one round trip, where a
    statement per photo cost a worker more than anything around the model but decoding.
    Each result is stored only into a row still ``queued``; returns (content hash, model
    version, sweep) of each row stored.

    The results travel as one JSON parameter, read back as rows by the database
    (``json_to_recordset`` on PostgreSQL, typed by its column list; ``json_each`` on SQLite,
    which has UPDATE ... FROM since 3.33), so that the statement is the same for every
    batch and SQLAlchemy compiles it once: a VALUES list of the batch's values is compiled
    again for every batch, at more than the statements per photo cost.
    """
    given = bindparam("rows", type_=JSON)
    columns = [
        column("b_hash", String),
        column("b_version", String),
        *(column(name, _predictions.c[name].type) for name in _RESULT_COLUMNS),
    ]
    if dialect == "postgresql":
        v = (
            func.json_to_recordset(given)
            .table_valued(*columns)
            .render_derived(name="v", with_types=True)
        )
    else:
        each = func.json_each(given).table_valued("value")
        v = select(
            *(func.json_extract(each.c.value, f"$.{c.name}").label(c.name) for c in columns)
        ).subquery("v")
    return (
        _predictions.update()
        .where(
            _predictions.c.content_hash == v.c.b_hash,
            _predictions.c.model_version == v.c.b_version,
            _predictions.c.status == ItemStatus.QUEUED,
            # The unique index's predicate, written out as it is (SQLite matches it only to
            # literals), so that SQLite too looks each row up there rather than reading the
            # table through for each result.
            _predictions.c.status.not_in(
                [literal_column(f"'{s}'") for s in (ItemStatus.FAILED, ItemStatus.DEFERRED)]
            ),
        )
        .values(
            {name: v.c[name] for name in _RESULT_COLUMNS}
            | {"classified_at": bindparam("classified_at")}
        )
        .returning(
            _predictions.c.content_hash, _predictions.c.model_version, _predictions.c.sweep_run_id
        )
    )
