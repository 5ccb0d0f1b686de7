"""``refund-sorter export``: the CSV an operator asks for holds exactly the matching rows of
the predictions table, and a database that was never migrated gets a plain instruction."""

import csv
from datetime import UTC, date, datetime

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import update
from sweep_support import (
    CSV_COLUMNS,
    Incoming,
    add_images,
    add_unreadable,
    all_predictions,
    backdate,
    build_settings,
    check_csv_matches,
    get_run,
    image_bytes,
    sweep_csv,
    utc,
)

from cli import main
from models import Prediction, SweepRun
from producer.sweep import run_sweep
from refund_sorter.db import dispose, session_factory
from refund_sorter.export import COLUMNS
from worker.local import local_dispatch

pytestmark = [pytest.mark.services, pytest.mark.model]

# Classification times around midnight UTC, so the day filters have an edge to get wrong.
LATE_ON_1ST = datetime(2024, 3, 1, 23, 30, tzinfo=UTC)
EARLY_ON_2ND = datetime(2024, 3, 2, 0, 30, tzinfo=UTC)
NOON_ON_3RD = datetime(2024, 3, 3, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def two_nights(pg_url, tiny_model, tmp_path_factory):
    """Two local sweeps (ok and failed rows in each), with known classification times."""
    settings = build_settings(tmp_path_factory.mktemp("export") / "home", pg_url, tiny_model)
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 8, seed=71)
    add_unreadable(incoming, seed=71)
    first = run_sweep(settings, dispatch=local_dispatch(settings), trigger="local").run
    add_images(incoming, 5, seed=72)
    add_unreadable(incoming, seed=72, empty=False)  # all empty files share one hash and row
    second = run_sweep(settings, dispatch=local_dispatch(settings), trigger="local").run
    rows = all_predictions(settings)
    assert len(rows) == 18 and {p.status for p in rows} == {"ok", "failed"}

    times = {}
    for i, p in enumerate(rows):
        times[p.id] = (
            LATE_ON_1ST if p.sweep_run_id == first.id else (EARLY_ON_2ND if i % 2 else NOON_ON_3RD)
        )
    with session_factory(pg_url).begin() as session:
        for row_id, when in times.items():
            session.execute(
                update(Prediction).where(Prediction.id == row_id).values(classified_at=when)
            )
    return settings, first.id, second.id


def export(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["export", *args])
    return result.exit_code, result.stdout, result.stderr


FILTERS = {
    "everything": ([], lambda p, first, second: True),
    "sweep-run": (["--sweep-run", "{second}"], lambda p, first, second: p.sweep_run_id == second),
    "failed": (["--status", "failed"], lambda p, first, second: p.status == "failed"),
    "ok-of-first-sweep": (
        ["--status", "ok", "--sweep-run", "{first}"],
        lambda p, first, second: p.status == "ok" and p.sweep_run_id == first,
    ),
    "since": (
        ["--since", "2024-03-02"],
        lambda p, first, second: utc(p.classified_at) >= EARLY_ON_2ND,
    ),
    "until": (
        ["--until", "2024-03-02"],
        lambda p, first, second: utc(p.classified_at) < NOON_ON_3RD,
    ),
    "one-day": (
        ["--since", "2024-03-02", "--until", "2024-03-02"],
        lambda p, first, second: utc(p.classified_at) == EARLY_ON_2ND,
    ),
}


@pytest.mark.parametrize("name", FILTERS)
def test_export_writes_exactly_the_matching_rows(name, two_nights, use_settings, tmp_path):
    settings, first, second = two_nights
    use_settings(settings)
    args, keep = FILTERS[name]
    args = [a.format(first=first, second=second) for a in args]
    out = tmp_path / "reports" / "export.csv"

    code, stdout, stderr = export("--out", str(out), *args)

    assert code == 0, stderr
    expected = [p for p in all_predictions(settings) if keep(p, first, second)]
    assert expected, "the filter should select something"
    assert f"exported {len(expected)} rows to {out}" in stdout
    check_csv_matches(out, expected)
    assert out.read_text().splitlines()[0].split(",") == COLUMNS
    assert set(CSV_COLUMNS) <= set(COLUMNS)


def test_export_to_standard_output_keeps_the_csv_clean(two_nights, use_settings):
    settings, _, second = two_nights
    use_settings(settings)

    code, stdout, stderr = export("--out", "-", "--sweep-run", str(second))

    assert code == 0, stderr
    expected = [p for p in all_predictions(settings) if p.sweep_run_id == second]
    assert f"exported {len(expected)} rows to -" in stderr
    lines = stdout.splitlines()
    assert lines[0].split(",") == COLUMNS and len(lines) == len(expected) + 1


def test_export_day_filters_are_utc_days_whatever_the_database_timezone(
    make_pg_database, make_settings, use_settings, tmp_path
):
    url = make_pg_database()
    name = url.rsplit("/", 1)[1]
    with session_factory(url).begin() as session:
        # A server on New York time (UTC-5 in March) must not shift the UTC days.
        session.connection().exec_driver_sql(
            f"ALTER DATABASE {name} SET timezone TO 'America/New_York'"
        )
        run = SweepRun(status="finished", trigger="local", model_version="v1")
        session.add(run)
        session.flush()
        for i, when in enumerate((LATE_ON_1ST, EARLY_ON_2ND, NOON_ON_3RD)):
            session.add(
                Prediction(
                    content_hash=f"{i:064d}",
                    model_version="v1",
                    sweep_run_id=run.id,
                    status="ok",
                    file_name=f"{i}.jpg",
                    original_path=f"/in/{i}.jpg",
                    classified_at=when,
                )
            )
    dispose(url)  # new connections start in the database's time zone
    settings = make_settings(url)
    use_settings(settings)
    out = tmp_path / "since.csv"

    code, _, stderr = export("--out", str(out), "--since", "2024-03-02")

    assert code == 0, stderr
    rows = all_predictions(settings)
    check_csv_matches(out, [p for p in rows if utc(p.classified_at).date() >= date(2024, 3, 2)])


@pytest.mark.parametrize(
    "command",
    [["export", "--out", "{out}"], ["sweep", "--local"], ["runs"]],
    ids=["export", "sweep", "runs"],
)
def test_a_database_never_migrated_gets_an_instruction_not_a_traceback(
    command, make_pg_database, make_settings, use_settings, tmp_path
):
    use_settings(make_settings(make_pg_database(migrate=False)))
    out = tmp_path / "out.csv"

    result = CliRunner().invoke(main, [a.format(out=out) for a in command])

    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "is at schema none" in result.stderr
    assert "run `refund-sorter db upgrade` first" in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


# Uploaded file names a spreadsheet would run as formulas; the last one has no extension
# (the producer recognises a JPEG by its header).
FORMULA_IMAGES = [
    '=HYPERLINK("evil.example","refund").jpg',
    "+1.jpg",
    "-2.jpg",
    "@SUM(A1).jpg",
    "\tTAB.jpg",
    "\rCR.jpg",
    "=2+5",
]
FORMULA_TEXT = "=cmd|' -c calc'!A0.jpg"  # not an image: a failed row, same name problem


def test_no_csv_cell_starts_a_formula(fresh_pg_url, make_settings, use_settings, tmp_path):
    settings = make_settings(fresh_pg_url)
    rng = np.random.default_rng(7)
    for name in FORMULA_IMAGES:
        (settings.incoming_dir / name).write_bytes(image_bytes(rng, ".jpg"))
    (settings.incoming_dir / FORMULA_TEXT).write_text("=1+1\n")
    backdate(settings.incoming_dir / FORMULA_TEXT)  # damaged, not still being written
    run = get_run(settings, run_sweep(settings, local_dispatch(settings), "local").run.id)
    assert (run.status, run.succeeded, run.failed) == ("finished", len(FORMULA_IMAGES), 1)
    assert {p.file_name for p in all_predictions(settings)} == {*FORMULA_IMAGES, FORMULA_TEXT}
    use_settings(settings)
    exported = tmp_path / "export.csv"
    code, _, stderr = export("--out", str(exported))
    assert code == 0, stderr

    for path in (sweep_csv(settings, run), exported):
        # Read as a spreadsheet does: cell by cell, after CSV quoting is undone.
        with open(path, newline="", encoding="utf-8") as fh:
            header, *lines = list(csv.reader(fh))
        assert len(lines) == len(FORMULA_IMAGES) + 1
        cells = [cell for line in lines for cell in line]
        assert [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")] == []
        rows = [dict(zip(header, line, strict=True)) for line in lines]
        assert {r["file_name"].removeprefix("'") for r in rows} == {*FORMULA_IMAGES, FORMULA_TEXT}
        assert all(r["file_name"].startswith("'") for r in rows)
        for r in rows:
            if r["status"] == "ok":  # numbers stay numbers
                assert 0 < float(r["sub_confidence"]) <= float(r["main_confidence"]) <= 1
