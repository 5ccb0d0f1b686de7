"""A file whose move fails after its row is committed, on the worker's side or the
producer's: its row says so (no final path, and why), so does the night's CSV, and a later
sweep files a classified photo it finds still in ``incoming/``, without classifying it
again, and corrects its row.

A destination that cannot be created is a regular file lying where its folder should be
(the tests run as root, which no folder mode stops).
"""

from pathlib import Path

import numpy as np
import pytest
from sweep_support import (
    NESTED,
    Incoming,
    add_images,
    add_unreadable,
    all_predictions,
    backdate,
    check_csv_matches,
    files_under,
    image_bytes,
    local_sweep,
    read_csv,
    sha256,
    sweep_csv,
    wait_for_run,
)

from producer.sweep import run_sweep
from refund_sorter.celery_app import publish

pytestmark = [pytest.mark.services, pytest.mark.model]

DOCK = Path(NESTED.parts[0])  # the first folder of the nested images' path


def block(folder: Path) -> None:
    """A regular file where ``folder`` should be: nothing can be created below it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("a file, where a folder should be\n")


def check_rows_name_only_files_that_are_there(rows) -> None:
    for p in rows:
        if p.final_path is not None:
            assert Path(p.final_path).is_file(), (p.file_name, p.final_path)
            assert sha256(Path(p.final_path).read_bytes()) == p.content_hash


def check_csv_paths(path: Path, rows) -> None:
    """The CSV holds ``rows`` field for field, their paths included."""
    check_csv_matches(path, rows)
    final = {line["content_hash"]: line["final_path"] for line in read_csv(path)}
    assert final == {p.content_hash: p.final_path or "" for p in rows}


def test_a_worker_that_cannot_move_files_leaves_rows_that_say_so(
    fresh_pg_url, broker_url, make_settings, start_worker
):
    settings = make_settings(fresh_pg_url, broker_url=broker_url, batch_size=4, torch_threads=1)
    incoming = Incoming(settings.incoming_dir)
    images = add_images(incoming, 12, seed=101)
    bad = add_unreadable(incoming, seed=101)
    block(settings.processed_dir / DOCK)
    block(settings.failed_dir / DOCK)
    nested = {rel: h for rel, h in images.items() if rel.is_relative_to(NESTED)}
    truncated = next(rel for rel in bad if rel.name.startswith("truncated"))
    assert nested and truncated.is_relative_to(NESTED)
    worker = start_worker(settings)

    first = run_sweep(settings, dispatch=publish, trigger="manual").run
    first = wait_for_run(settings, first.id, logs=[worker])

    assert (first.status, first.succeeded, first.failed, first.deferred, first.pending) == (
        "finished",
        12,
        3,
        0,
        0,
    )
    rows = all_predictions(settings)
    by_hash = {p.content_hash: p for p in rows}
    for rel, content_hash in images.items():
        p = by_hash[content_hash]
        assert p.status == "ok"
        if rel in nested:  # classified, and still in incoming/: the row says so, and why
            assert p.final_path is None
            assert p.error == (
                f"left where it is: could not move it to {settings.processed_dir / rel}: "
                "not a directory"
            )
            assert (settings.incoming_dir / rel).is_file()
        else:
            assert Path(p.final_path) == settings.processed_dir / rel and p.error is None
    damaged = by_hash[bad[truncated][0]]
    assert (damaged.status, damaged.final_path) == ("failed", None)
    assert damaged.error.startswith("corrupt or truncated image")
    assert f"; left where it is: could not move it to {settings.failed_dir / truncated}" in (
        damaged.error
    )
    assert set(files_under(settings.incoming_dir)) == {*nested, truncated}
    check_rows_name_only_files_that_are_there(rows)
    # The night's CSV was written after the corrections: no path to a file that is not there.
    check_csv_paths(sweep_csv(settings, first), rows)

    # The operator removes what blocked the folders; the next sweep files the classified
    # photos without classifying them again, and tries the damaged one again.
    (settings.processed_dir / DOCK).unlink()
    (settings.failed_dir / DOCK).unlink()
    second = run_sweep(settings, dispatch=publish, trigger="manual").run
    assert (second.found, second.known, second.enqueued) == (len(nested) + 1, len(nested), 1)
    second = wait_for_run(settings, second.id, logs=[worker])

    assert (second.status, second.succeeded, second.failed) == ("finished", 0, 1)
    after = all_predictions(settings)
    for rel, content_hash in nested.items():
        before, now = (
            by_hash[content_hash],
            next(p for p in after if p.id == by_hash[content_hash].id),
        )
        assert (now.status, now.classified_at, now.sub_category, now.sweep_run_id) == (
            before.status,
            before.classified_at,
            before.sub_category,
            first.id,
        )
        assert Path(now.final_path) == settings.processed_dir / rel and now.error is None
    assert [p.content_hash for p in after if p.status == "ok"] == [
        p.content_hash for p in rows if p.status == "ok"
    ]
    retried = next(p for p in after if p.sweep_run_id == second.id)
    assert Path(retried.final_path) == settings.failed_dir / truncated
    assert files_under(settings.incoming_dir) == {}
    assert files_under(settings.processed_dir) == images
    check_rows_name_only_files_that_are_there(after)
    check_csv_paths(sweep_csv(settings, second), [retried])


def test_the_producers_moves_that_fail_leave_rows_that_say_so(
    fresh_pg_url, make_settings, classifier
):
    settings = make_settings(fresh_pg_url)
    incoming = Incoming(settings.incoming_dir)
    images = add_images(incoming, 6, seed=102)
    nested = {rel: h for rel, h in images.items() if rel.is_relative_to(NESTED)}
    slip = settings.incoming_dir / NESTED / "slip.jpg"
    slip.write_text("returns slip: 1 shirt\n")
    backdate(slip)  # damaged, not still being written
    block(settings.processed_dir / DOCK)
    block(settings.failed_dir / DOCK)

    first = local_sweep(settings, classifier)

    assert (first.status, first.succeeded, first.failed) == ("finished", 6, 1)
    (slip_row,) = [p for p in all_predictions(settings) if p.status == "failed"]
    assert slip_row.final_path is None
    assert slip_row.error == (
        "not an image (unrecognised content); left where it is: could not move it to "
        f"{settings.failed_dir / NESTED / 'slip.jpg'}: not a directory"
    )
    check_csv_paths(sweep_csv(settings, first), all_predictions(settings))

    # The next night the producer finds the classified photos still in incoming/ and tries
    # to file them: the folder is still blocked, so the rows still say where the files are.
    second = local_sweep(settings, classifier)

    assert (second.found, second.known, second.enqueued, second.failed) == (
        len(nested) + 1,
        len(nested) + 1,
        0,
        0,
    )
    rows = all_predictions(settings)
    assert len(rows) == 7  # nothing recorded or classified again
    for rel, content_hash in nested.items():
        (p,) = [p for p in rows if p.content_hash == content_hash]
        assert p.final_path is None and (settings.incoming_dir / rel).is_file()
        assert p.error == (
            f"left where it is: could not move it to {settings.processed_dir / rel}: "
            "not a directory"
        )
    check_rows_name_only_files_that_are_there(rows)

    # Unblocked: the night after files them, and their rows name where they are.
    (settings.processed_dir / DOCK).unlink()
    third = local_sweep(settings, classifier)

    assert (third.found, third.known, third.enqueued) == (len(nested) + 1, len(nested) + 1, 0)
    rows = all_predictions(settings)
    for rel, content_hash in nested.items():
        (p,) = [p for p in rows if p.content_hash == content_hash]
        assert Path(p.final_path) == settings.processed_dir / rel and p.error is None
    assert files_under(settings.processed_dir) == images
    assert files_under(settings.incoming_dir) == {NESTED / "slip.jpg": sha256(slip.read_bytes())}
    check_rows_name_only_files_that_are_there(rows)


def test_rows_naming_a_file_that_is_not_there_are_corrected_by_the_next_sweep(
    fresh_pg_url, make_settings, classifier
):
    """Rows as a failed move left them before moves were checked: ``ok``, naming a file in
    processed/ that is not there, while the photo lies in incoming/."""
    settings = make_settings(fresh_pg_url)
    incoming = Incoming(settings.incoming_dir)
    images = add_images(incoming, 4, seed=103)
    first = local_sweep(settings, classifier)
    before = {p.content_hash: p for p in all_predictions(settings)}
    (kept, kept_hash), (taken, taken_hash) = list(images.items())[:2]
    for rel in (kept, taken):
        (settings.incoming_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings.processed_dir / rel).rename(settings.incoming_dir / rel)
    # Since then another photo has taken the second one's name in processed/.
    other = image_bytes(np.random.default_rng(104), taken.suffix)
    (settings.processed_dir / taken).write_bytes(other)

    second = local_sweep(settings, classifier)

    assert (second.found, second.known, second.enqueued, second.succeeded) == (2, 2, 0, 0)
    after = {p.content_hash: p for p in all_predictions(settings)}
    assert after.keys() == before.keys()
    renamed = taken.with_name(f"{taken.stem}-{taken_hash[:8]}{taken.suffix}")
    assert Path(after[kept_hash].final_path) == settings.processed_dir / kept
    assert Path(after[taken_hash].final_path) == settings.processed_dir / renamed
    for content_hash, p in after.items():
        was = before[content_hash]
        assert (p.id, p.sweep_run_id, p.classified_at) == (was.id, first.id, was.classified_at)
    assert files_under(settings.incoming_dir) == {}
    assert files_under(settings.processed_dir) == {
        **{rel: h for rel, h in images.items() if rel != taken},
        taken: sha256(other),
        renamed: taken_hash,
    }
    check_rows_name_only_files_that_are_there(after.values())
