"""A batch's rows, on SQLite and on PostgreSQL alike: ``crud.record_results`` stores its
results in one statement (every row's values, into rows still ``queued`` only, each image
once), and ``refund_sorter.filing`` counts its filed photos in one."""

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sweep_support import postgres_database

from models import ItemStatus, Prediction, SweepRun, SweepStatus
from refund_sorter import crud
from refund_sorter.crud import ItemResult
from refund_sorter.db import dispose, session_factory, upgrade
from refund_sorter.filing import Move, file_committed
from refund_sorter.messages import WorkItem

MODEL = "m1"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def sessions(request, tmp_path) -> Iterator:
    """A migrated database of each kind, with one running sweep (id 1)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'rows.db'}"
        upgrade(url)
        yield _with_sweep(url)
        dispose(url)
    else:
        with postgres_database() as url:
            yield _with_sweep(url)


def _with_sweep(url: str):
    sessions = session_factory(url)
    with sessions.begin() as session:
        session.add(SweepRun(status=SweepStatus.RUNNING, trigger="manual", model_version=MODEL))
    return sessions


def pending(sessions) -> tuple[int, str]:
    with sessions() as session:
        run = session.get(SweepRun, 1)
        return run.pending, run.status


def add_rows(sessions, *rows: tuple[str, str, str]) -> None:
    """Rows (content hash, model version, status) of sweep 1."""
    with sessions.begin() as session:
        for content_hash, version, status in rows:
            session.add(
                Prediction(
                    content_hash=content_hash,
                    model_version=version,
                    sweep_run_id=1,
                    status=status,
                    file_name=f"{content_hash}.jpg",
                    original_path=f"/in/{content_hash}.jpg",
                )
            )


def rows(sessions) -> dict[tuple[str, str, str], Prediction]:
    with sessions() as session:
        found = session.scalars(select(Prediction).order_by(Prediction.id))
        return {(p.content_hash, p.model_version, p.status): p for p in found}


def ok(content_hash: str, version: str = MODEL, **values) -> ItemResult:
    return ItemResult(
        content_hash,
        version,
        ItemStatus.OK,
        f"/out/{content_hash}.jpg",
        "tops",
        0.9,
        "shirt",
        0.8,
        **values,
    )


def test_every_row_of_the_batch_gets_its_own_values(sessions):
    add_rows(sessions, ("a", MODEL, "queued"), ("b", MODEL, "queued"), ("c", MODEL, "queued"))
    a = ok(
        "a",
        needs_review=True,
        top_subs=(("tops", "shirt", 0.81234), ("tops", "blouse", 0.1)),
        sub_margin=0.71,
        audited=True,
        audit_rate=0.02,
        review_threshold=0.6,
    )
    b = ItemResult("b", MODEL, ItemStatus.FAILED, "/failed/b.jpg", error="not an image")
    c = ItemResult("c", MODEL, ItemStatus.DEFERRED, None, error="still being written")

    with sessions.begin() as session:
        stored = crud.record_results(session, [a, b, c])

    assert stored == {"a": 1, "b": 1, "c": 1}
    found = rows(sessions)
    row = found["a", MODEL, "ok"]
    assert (row.final_path, row.main_category, row.main_confidence) == ("/out/a.jpg", "tops", 0.9)
    assert (row.sub_category, row.sub_confidence, row.needs_review) == ("shirt", 0.8, True)
    assert row.top_subs == [
        {"main": "tops", "sub": "shirt", "p": 0.8123},
        {"main": "tops", "sub": "blouse", "p": 0.1},
    ]
    assert (row.sub_margin, row.audited, row.audit_rate, row.review_threshold) == (
        0.71,
        True,
        0.02,
        0.6,
    )
    assert row.error is None and row.classified_at is not None
    failed = found["b", MODEL, "failed"]
    assert (failed.final_path, failed.error, failed.main_confidence) == (
        "/failed/b.jpg",
        "not an image",
        None,
    )
    assert (failed.top_subs, failed.needs_review, failed.audited) == (None, False, False)
    deferred = found["c", MODEL, "deferred"]
    assert (deferred.final_path, deferred.error) == (None, "still being written")
    assert len({r.classified_at for r in found.values()}) == 1  # the batch's one time
    with sessions() as session:
        run = session.get(SweepRun, 1)
        assert (run.succeeded, run.failed, run.deferred) == (1, 1, 1)


def test_a_full_batch_stores_each_row_s_own_figures_exactly(sessions):
    rng = random.Random(5)
    hashes = [f"h{i:02d}" for i in range(32)]
    add_rows(sessions, *((h, MODEL, "queued") for h in hashes))
    results = {
        h: ok(
            h,
            needs_review=rng.random() < 0.5,
            sub_margin=rng.random(),
            audit_rate=rng.random(),
            review_threshold=rng.random(),
        )
        for h in hashes
    }
    for r in results.values():
        r.main_confidence, r.sub_confidence = rng.random(), rng.random() / 3
        r.final_path = f"/out/dock-ü/{r.content_hash} 'it" + "\\\"s'.jpg"  # quotes, a backslash

    with sessions.begin() as session:
        assert crud.record_results(session, list(results.values())) == dict.fromkeys(hashes, 1)

    for (h, _, status), row in rows(sessions).items():
        r = results[h]
        assert status == "ok"
        assert (row.main_confidence, row.sub_confidence, row.sub_margin) == (
            r.main_confidence,
            r.sub_confidence,
            r.sub_margin,
        )
        assert (row.needs_review, row.audit_rate, row.review_threshold, row.final_path) == (
            r.needs_review,
            r.audit_rate,
            r.review_threshold,
            r.final_path,
        )


def test_rows_not_queued_and_other_models_rows_are_left_as_they_are(sessions):
    add_rows(
        sessions,
        ("a", MODEL, "queued"),
        ("b", MODEL, "ok"),  # stored by the first delivery of its task
        ("c", "m2", "queued"),  # queued for another model
        ("d", MODEL, "failed"),  # history: a retry has a row of its own
    )
    before = {key: (p.final_path, p.classified_at) for key, p in rows(sessions).items()}

    with sessions.begin() as session:
        stored = crud.record_results(session, [ok("a"), ok("b"), ok("c"), ok("d"), ok("e")])

    assert stored == {"a": 1}
    after = rows(sessions)
    assert set(after) == {("a", MODEL, "ok"), *list(before)[1:]}
    for key in list(before)[1:]:
        assert (after[key].final_path, after[key].classified_at) == before[key]
    with sessions() as session:
        assert session.get(SweepRun, 1).succeeded == 1


def test_an_image_given_twice_in_a_batch_is_stored_once_with_its_first_result(sessions):
    add_rows(sessions, ("a", MODEL, "queued"))

    with sessions.begin() as session:
        stored = crud.record_results(
            session,
            [ok("a"), ItemResult("a", MODEL, ItemStatus.FAILED, None, error="later")],
        )

    assert stored == {"a": 1}
    assert set(rows(sessions)) == {("a", MODEL, "ok")}
    with sessions() as session:
        run = session.get(SweepRun, 1)
        assert (run.succeeded, run.failed) == (1, 0)


def test_a_batch_of_failures_only_stores_its_empty_values(sessions):
    # Every value of a column NULL: PostgreSQL must still take them for the column's type.
    add_rows(sessions, ("a", MODEL, "queued"), ("b", MODEL, "queued"))
    items = [WorkItem(f"/in/{h}.jpg", h, MODEL) for h in ("a", "b")]

    with sessions.begin() as session:
        stored = crud.record_failures(session, items, "not classified after 3 attempts")

    assert stored == {"a": 1, "b": 1}
    for p in rows(sessions).values():
        assert (p.status, p.final_path, p.error) == (
            "failed",
            None,
            "not classified after 3 attempts",
        )
        assert (p.main_confidence, p.top_subs, p.needs_review, p.audited) == (
            None,
            None,
            False,
            False,
        )


def test_a_batch_filed_whole_counts_down_its_night_and_the_last_finishes_it(sessions, tmp_path):
    # Every move done, one night: the count goes down in one statement, committed on its own.
    with sessions.begin() as session:
        session.get(SweepRun, 1).pending = 3
    src, dest = tmp_path / "a.jpg", tmp_path / "processed" / "a.jpg"
    src.write_bytes(b"a")
    export_dir = tmp_path / "export"

    assert file_committed(sessions, [Move(src, dest, (1, str(src)))], {1: 2}, export_dir) == []
    assert pending(sessions) == (1, "running") and dest.read_bytes() == b"a"
    assert not export_dir.exists()
    assert file_committed(sessions, [], {1: 1}, export_dir) == [1]
    assert pending(sessions) == (0, "finished")
    assert [p.name[-10:] for p in export_dir.iterdir()] == ["-00001.csv"]  # its CSV
    assert file_committed(sessions, [], {1: 1}, export_dir) == []  # finished: counted once
    assert pending(sessions) == (0, "finished")


def test_a_batch_whose_move_failed_corrects_its_row_in_the_same_transaction(sessions, tmp_path):
    add_rows(sessions, ("a", MODEL, "queued"))
    with sessions.begin() as session:
        session.get(SweepRun, 1).pending = 1
        crud.record_results(session, [ok("a")])
    missing = Path("/in/a.jpg")  # the row's original path; no such file

    finished = file_committed(
        sessions, [Move(missing, Path("/out/a.jpg"), (1, str(missing)))], {1: 1}, tmp_path
    )

    assert finished == [1] and pending(sessions) == (0, "finished")
    (row,) = rows(sessions).values()
    assert row.final_path is None and row.error.startswith("left where it is: could not move")
