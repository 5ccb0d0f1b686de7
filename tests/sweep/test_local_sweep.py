"""``refund-sorter sweep --local``, as an operator runs it, on SQLite and on PostgreSQL:
where every file ends up, what the table and the sweep's CSV say, and what the next
night does with files it has already seen."""

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sweep_support import (
    Incoming,
    add_images,
    add_unreadable,
    all_predictions,
    all_runs,
    check_finished_sweep,
    files_under,
    read_csv,
    sweep_csv,
)

from cli import main

pytestmark = pytest.mark.model


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def settings(request, make_settings, use_settings):
    url = request.getfixturevalue("fresh_pg_url") if request.param == "postgresql" else None
    settings = make_settings(url)
    use_settings(settings)
    assert cli("db", "upgrade").startswith("database ")
    return settings


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def snapshot(settings) -> list[tuple]:
    return [
        (p.id, p.content_hash, p.status, p.sweep_run_id, p.final_path, p.classified_at)
        for p in all_predictions(settings)
    ]


def test_local_sweep_files_classifies_and_exports_everything(settings, tiny_model):
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 50, seed=1)
    add_unreadable(incoming, seed=1)

    out = cli("sweep", "--local")

    (run,) = all_runs(settings)
    assert run.trigger == "local"
    assert f"sweep {run.id}: found 53 files" in out
    assert (
        "status finished: 50 classified, 3 failed, 0 known, 0 left for later, 0 still queued" in out
    )
    assert f"CSV: {sweep_csv(settings, run)}" in out
    rows = check_finished_sweep(settings, run.id, incoming, tiny_model.taxonomy)
    # The threshold sits mid-way through the model's confidences: both outcomes occur.
    assert {p.needs_review for p in rows if p.status == "ok"} == {True, False}

    # The next night finds nothing new and changes nothing.
    before = snapshot(settings)
    cli("sweep", "--local")
    second = all_runs(settings)[-1]
    assert second.id != run.id
    assert (second.status, second.found, second.enqueued, second.known, second.pending) == (
        "finished",
        0,
        0,
        0,
        0,
    )
    assert snapshot(settings) == before
    assert read_csv(sweep_csv(settings, second)) == []


def test_a_photo_dropped_again_is_filed_without_a_new_row(settings):
    incoming = Incoming(settings.incoming_dir)
    images = add_images(incoming, 4, seed=2)
    cli("sweep", "--local")
    before = snapshot(settings)
    processed_before = files_under(settings.processed_dir)

    # The same bytes again: once under the same name, once under another one.
    (rel, content_hash), (other_rel, other_hash) = list(images.items())[:2]
    target = settings.incoming_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(settings.processed_dir / rel, target)
    shutil.copy(settings.processed_dir / other_rel, settings.incoming_dir / "again.png")
    cli("sweep", "--local")

    run = all_runs(settings)[-1]
    assert (run.status, run.found, run.known, run.enqueued, run.succeeded, run.failed) == (
        "finished",
        2,
        2,
        0,
        0,
        0,
    )
    assert snapshot(settings) == before
    assert files_under(settings.incoming_dir) == {}
    # Nothing overwritten: the copy of a name already taken gets the hash in its name.
    renamed = rel.with_name(f"{rel.stem}-{content_hash[:8]}{rel.suffix}")
    assert files_under(settings.processed_dir) == {
        **processed_before,
        renamed: content_hash,
        Path("again.png"): other_hash,
    }


def test_the_same_photo_twice_in_one_night_is_classified_once(settings):
    incoming = Incoming(settings.incoming_dir)
    images = add_images(incoming, 3, seed=3)
    rel, content_hash = next(iter(images.items()))
    shutil.copy(settings.incoming_dir / rel, settings.incoming_dir / "zz-copy.jpg")

    cli("sweep", "--local")

    run = all_runs(settings)[-1]
    assert (run.found, run.enqueued, run.known, run.succeeded, run.status) == (
        4,
        3,
        1,
        3,
        "finished",
    )
    assert sorted(p.content_hash for p in all_predictions(settings)) == sorted(images.values())
    # The copy waits in incoming/ for the next night, which files it as already classified.
    assert files_under(settings.incoming_dir) == {Path("zz-copy.jpg"): content_hash}
    cli("sweep", "--local")
    run = all_runs(settings)[-1]
    assert (run.found, run.known, run.enqueued) == (1, 1, 0)
    assert files_under(settings.incoming_dir) == {}
    assert files_under(settings.processed_dir)[Path("zz-copy.jpg")] == content_hash
    assert len(all_predictions(settings)) == 3


def test_no_stored_path_holds_dot_dot_even_when_the_settings_do(
    make_settings, use_settings, monkeypatch
):
    plain = make_settings()
    use_settings(plain)
    monkeypatch.setenv("REFUND_SORTER_INCOMING_DIR", str(plain.incoming_dir / ".." / "incoming"))
    monkeypatch.setenv("REFUND_SORTER_PROCESSED_DIR", str(plain.home / "x" / ".." / "processed"))
    cli("db", "upgrade")
    add_images(Incoming(plain.incoming_dir), 3, seed=17)
    add_unreadable(Incoming(plain.incoming_dir), seed=17)

    cli("sweep", "--local")

    rows = all_predictions(plain)
    assert len(rows) == 6
    for p in rows:
        assert ".." not in Path(p.original_path).parts, p.original_path
        assert p.final_path and ".." not in Path(p.final_path).parts, p.final_path
    assert len(files_under(plain.processed_dir)) == 3
