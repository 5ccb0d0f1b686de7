"""The SQL queries docs/operating.md gives operators, run against PostgreSQL on known rows."""

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from models import Prediction, Review, SweepRun
from refund_sorter.db import dispose, get_engine, session_factory, upgrade

OPERATING = Path(__file__).resolve().parent.parent / "docs" / "operating.md"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"

pytestmark = pytest.mark.services


def operator_queries() -> dict[str, str]:
    blocks = re.findall(r"```sql\n(.*?)```", OPERATING.read_text(), flags=re.S)
    queries = {}
    for block in blocks:
        name = re.match(r"-- name: (\w+)\n", block)
        assert name, f"every SQL block of docs/operating.md starts with '-- name:': {block[:60]}"
        queries[name[1]] = block[name.end() :].strip().rstrip(";")
    return queries


def _failed(run, name, content_hash, error, when):
    return Prediction(
        content_hash=content_hash,
        model_version="v1",
        sweep_run_id=run,
        status="failed",
        file_name=name,
        original_path=f"/in/{name}",
        final_path=f"/failed/{name}",
        error=error,
        classified_at=when,
    )


@pytest.fixture(scope="module")
def pg_url():
    name = f"rs_queries_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    yield url
    dispose(url)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _prediction(run, name, status, when, version="v1", **fields):
    return Prediction(
        model_version=version,
        sweep_run_id=run,
        status=status,
        file_name=name,
        original_path=f"/in/{name}",
        classified_at=when,
        **fields,
    )


def _ok(run, name, main, sub, conf, review=False, version="v1"):
    return _prediction(
        run,
        name,
        "ok",
        datetime(2026, 11, 20 + run, 2, 5, tzinfo=UTC),
        version,
        content_hash=uuid.uuid4().hex * 2,
        final_path=f"/done/{name}",
        main_category=main,
        main_confidence=min(1.0, conf + 0.05),
        sub_category=sub,
        sub_confidence=conf,
        needs_review=review,
    )


def _failed(run, name, content_hash, error, when):
    return _prediction(
        run,
        name,
        "failed",
        when,
        content_hash=content_hash,
        final_path=f"/failed/{name}",
        error=error,
    )


@pytest.fixture(scope="module")
def seeded(pg_url):
    night = lambda day: datetime(2026, 11, day, 2, 0, tzinfo=UTC)  # noqa: E731
    with session_factory(pg_url).begin() as s:
        s.add_all(
            [
                SweepRun(
                    id=1,
                    status="finished",
                    trigger="beat",
                    model_version="v1",
                    started_at=night(21),
                    found=4,
                    enqueued=4,
                    succeeded=4,
                ),
                SweepRun(
                    id=2,
                    status="finished",
                    trigger="beat",
                    model_version="v1",
                    started_at=night(22),
                    found=3,
                    enqueued=3,
                    succeeded=1,
                    failed=2,
                ),
                SweepRun(
                    id=3,
                    status="skipped",
                    trigger="manual",
                    model_version="v1",
                    started_at=night(22),
                    message="sweep 2 still running",
                ),
            ]
        )
        s.flush()
        s.add_all(
            [
                _ok(1, "IMG_0042.jpg", "footwear", "shoes", 0.97),
                _ok(1, "a.jpg", "footwear", "shoes", 0.91),
                _ok(1, "b.jpg", "bottomwear", "pants", 0.55, review=True),
                _ok(1, "c.jpg", "bottomwear", "skirt", 0.75),
                _ok(2, "IMG_0042.jpg", "footwear", "shoes", 0.93, version="v2"),
                _failed(2, "broken.jpg", "f" * 64, "corrupt or truncated image", night(22)),
                _failed(2, "notes.txt", "e" * 64, "not an image", night(22)),
            ]
        )
        s.flush()
        by_name = {p.file_name: p.id for p in s.query(Prediction).filter_by(sweep_run_id=1)}
        # b.jpg is decided twice: the newest answer counts.
        for name, reviewer, sub, hour in (
            ("b.jpg", "anna", "pants", 9),
            ("c.jpg", "anna", "skirt", 10),
            ("b.jpg", "ben", "shorts", 11),
        ):
            s.add(
                Review(
                    prediction_id=by_name[name],
                    reviewer=reviewer,
                    main_category="bottomwear",
                    sub_category=sub,
                    reviewed_at=datetime(2026, 11, 22, hour, 0, tzinfo=UTC),
                )
            )
    return pg_url


def run(url, sql):
    with get_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def test_the_operating_guide_lists_the_queries_operators_need():
    assert set(operator_queries()) >= {
        "counts_per_category_per_night",
        "to_review_by_hand",
        "below_a_chosen_confidence",
        "one_image_history",
        "failures_of_last_night",
        "last_sweeps",
        "reviewed_latest_answers",
        "corrections_per_predicted_category",
    }


def test_counts_per_category_per_night(seeded):
    rows = run(seeded, operator_queries()["counts_per_category_per_night"])
    assert [(str(r[0]), r[1], r[2], r[3], r[4]) for r in rows] == [
        ("2026-11-21", 1, "bottomwear", "pants", 1),
        ("2026-11-21", 1, "bottomwear", "skirt", 1),
        ("2026-11-21", 1, "footwear", "shoes", 2),
        ("2026-11-22", 2, "footwear", "shoes", 1),
    ]


def test_review_queries(seeded):
    assert [r[0] for r in run(seeded, operator_queries()["to_review_by_hand"])] == ["b.jpg"]
    below = run(seeded, operator_queries()["below_a_chosen_confidence"])
    assert [r[0] for r in below] == ["b.jpg", "c.jpg"]


def test_reviewed_latest_answers(seeded):
    rows = run(seeded, operator_queries()["reviewed_latest_answers"])
    assert [r[:6] for r in rows] == [
        ("b.jpg", "bottomwear", "pants", "bottomwear", "shorts", "ben"),
        ("c.jpg", "bottomwear", "skirt", "bottomwear", "skirt", "anna"),
    ]


def test_corrections_per_predicted_category(seeded):
    rows = run(seeded, operator_queries()["corrections_per_predicted_category"])
    assert rows == [("bottomwear", "pants", 1, 1), ("bottomwear", "skirt", 1, 0)]


def test_one_image_history(seeded):
    rows = run(seeded, operator_queries()["one_image_history"])
    assert [(r[0], r[1], r[2]) for r in rows] == [(1, "v1", "ok"), (2, "v2", "ok")]


def test_failures_of_last_night_ignore_skipped_runs(seeded):
    rows = run(seeded, operator_queries()["failures_of_last_night"])
    assert [(r[0], r[1]) for r in rows] == [
        ("broken.jpg", "corrupt or truncated image"),
        ("notes.txt", "not an image"),
    ]


def test_last_sweeps(seeded):
    rows = run(seeded, operator_queries()["last_sweeps"])
    assert [(r[0], r[3]) for r in rows] == [(3, "skipped"), (2, "finished"), (1, "finished")]


def test_queries_use_the_indexes_they_need(seeded):
    # Planner choices on a tiny table are not meaningful; check the indexes exist instead.
    names = {
        r[0]
        for r in run(seeded, "SELECT indexname FROM pg_indexes WHERE tablename = 'predictions'")
    }
    assert {
        "uq_predictions_hash_model",
        "ix_predictions_sweep_status",
        "ix_predictions_review",
        "ix_predictions_file_name",
        "ix_predictions_category",
    } <= names
