"""What a worker does when the world changed after the producer enqueued an image: the
file is gone, its bytes changed, the message was delivered twice, or the worker runs
another model. No case loses a row or a file, and none writes a result twice."""

import numpy as np
import pytest
from sweep_support import (
    Incoming,
    add_images,
    all_predictions,
    check_csv_matches,
    files_under,
    get_run,
    image_bytes,
    save_random_model,
    sha256,
    sweep_csv,
)

from producer.sweep import run_sweep
from refund_sorter.messages import WorkItem
from worker.pipeline import process_batch

pytestmark = [pytest.mark.services, pytest.mark.model]


@pytest.fixture
def enqueued(fresh_pg_url, make_settings):
    """A sweep over six images whose work items were dispatched but not yet processed."""
    settings = make_settings(fresh_pg_url)
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 6, seed=81)
    items: list[WorkItem] = []
    run = run_sweep(settings, dispatch=items.extend, trigger="manual").run
    assert (run.status, run.enqueued) == ("running", 6) and len(items) == 6
    return settings, incoming, run, items


def rows_by_hash(settings) -> dict:
    return {p.content_hash: p for p in all_predictions(settings)}


def test_a_vanished_file_fails_and_a_changed_one_is_left_for_later(enqueued, classifier):
    settings, incoming, run, items = enqueued
    removed, changed = items[0], items[1]
    removed_rel = next(rel for rel, h in incoming.images.items() if h == removed.content_hash)
    changed_rel = next(rel for rel, h in incoming.images.items() if h == changed.content_hash)
    (settings.incoming_dir / removed_rel).unlink()
    new_bytes = image_bytes(np.random.default_rng(999), ".png")
    (settings.incoming_dir / changed_rel).write_bytes(new_bytes)

    outcome = process_batch(items, classifier, settings)

    assert (outcome.ok, outcome.failed, outcome.deferred, outcome.ignored) == (4, 1, 1, 0)
    rows = rows_by_hash(settings)
    gone = rows[removed.content_hash]
    assert gone.status == "failed" and "file not found" in gone.error
    assert gone.final_path is None and gone.classified_at is not None
    # Not the bytes the scan read: taken for a file still being written, not a failure.
    edited = rows[changed.content_hash]
    assert edited.status == "deferred" and "still being written" in edited.error
    assert "changed between two reads" in edited.error
    # The edited file stays in incoming/ with its new bytes, for the next sweep.
    assert edited.final_path is None
    assert files_under(settings.failed_dir) == {}
    assert all(rows[it.content_hash].status == "ok" for it in items[2:])
    assert files_under(settings.incoming_dir) == {changed_rel: sha256(new_bytes)}
    finished = get_run(settings, run.id)
    assert (
        finished.status,
        finished.succeeded,
        finished.failed,
        finished.deferred,
        finished.pending,
    ) == ("finished", 4, 1, 1, 0)
    check_csv_matches(sweep_csv(settings, finished), list(rows.values()))

    # The next sweep classifies the new content under a row of its own.
    queued: list[WorkItem] = []
    second = run_sweep(settings, dispatch=queued.extend, trigger="manual").run
    assert (second.found, second.enqueued) == (1, 1)
    assert queued[0].content_hash == sha256(new_bytes)
    process_batch(queued, classifier, settings)
    assert rows_by_hash(settings)[sha256(new_bytes)].status == "ok"
    assert files_under(settings.incoming_dir) == {}


def test_a_batch_delivered_twice_is_stored_once(enqueued, classifier):
    settings, _, run, items = enqueued
    first = process_batch(items, classifier, settings)
    rows = [
        (p.id, p.status, p.final_path, p.classified_at, p.sub_confidence)
        for p in all_predictions(settings)
    ]
    files = files_under(settings.processed_dir)

    again = process_batch(items, classifier, settings)

    assert (first.ok, again.ok, again.failed, again.ignored) == (6, 0, 0, 6)
    assert again.finished_sweeps == ()
    assert [
        (p.id, p.status, p.final_path, p.classified_at, p.sub_confidence)
        for p in all_predictions(settings)
    ] == rows
    assert files_under(settings.processed_dir) == files
    counts = get_run(settings, run.id)
    assert (counts.succeeded, counts.failed, counts.pending) == (6, 0, 0)


def test_a_worker_with_another_model_leaves_the_work_queued(enqueued, classifier, tmp_path):
    from classifier.predict import Classifier

    settings, incoming, run, items = enqueued
    save_random_model(tmp_path / "newer.pt", seed=1, note="another model")
    newer = Classifier.from_path(tmp_path / "newer.pt", "cpu")
    assert newer.version != items[0].model_version

    outcome = process_batch(items, newer, settings)

    assert (outcome.ok, outcome.failed, outcome.ignored) == (0, 0, 6)
    assert {p.status for p in all_predictions(settings)} == {"queued"}
    assert files_under(settings.incoming_dir) == incoming.images
    assert not settings.processed_dir.exists() and not settings.failed_dir.exists()
    assert get_run(settings, run.id).pending == 6
    # A worker with the model the items were enqueued for then does the work.
    assert process_batch(items, classifier, settings).ok == 6
    assert get_run(settings, run.id).status == "finished"
