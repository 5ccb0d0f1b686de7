"""The night's CSV is written once, by the process that files the night's last photos, after
its moves and the corrections of the files that did not move: its rows and the files on disk
agree whichever pool process finishes last, and when a process stops between its commit and
its moves, the stall check files what it left and writes the CSV."""

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sweep_support import (
    REPO_ROOT,
    Incoming,
    ServiceProcess,
    add_images,
    all_predictions,
    files_under,
    image_bytes,
    read_csv,
    service_env,
    sha256,
    sweep_csv,
    wait_for_run,
    wait_for_workers,
)
from test_failed_moves import block, check_csv_paths, check_rows_name_only_files_that_are_there

from models import ItemStatus
from producer.sweep import resume_stalled_sweep, run_sweep
from refund_sorter import crud
from refund_sorter.celery_app import publish
from refund_sorter.db import session_factory, upgrade

HELD = Path("held") / "held-photo.jpg"


@pytest.mark.services
@pytest.mark.model
def test_the_csv_waits_for_the_moves_of_a_batch_that_committed_before_the_last(
    fresh_pg_url, broker_url, make_settings, producer_app, tmp_path, outcome_failed
):
    settings = make_settings(fresh_pg_url, broker_url=broker_url, torch_threads=1)
    incoming = Incoming(settings.incoming_dir)
    images = add_images(incoming, 40, seed=303)  # two tasks of up to 32: two batches
    data = image_bytes(np.random.default_rng(9303), ".jpg")
    (settings.incoming_dir / HELD).parent.mkdir()
    (settings.incoming_dir / HELD).write_bytes(data)
    held_hash = sha256(data)
    block(settings.processed_dir / HELD.parent)  # the held photo's move fails
    signals = tmp_path / "signals"
    signals.mkdir()
    env = service_env(settings) | {
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(Path(__file__).parent)]),
        "TEST_HELD_HASH": held_hash,
        "TEST_SIGNALS": str(signals),
    }
    argv = [sys.executable, "-m", "celery", "-A", "interleaved_worker", "worker"]
    argv += ["--concurrency", "2", "--pool", "prefork", "-n", "w@csv-test", "--loglevel", "INFO"]
    worker = ServiceProcess("w@csv-test", argv, env, tmp_path / "worker.log")
    try:
        wait_for_workers(producer_app, [worker])
        run = run_sweep(settings, dispatch=publish, trigger="manual").run
        assert run.enqueued == 41
        run = wait_for_run(settings, run.id, logs=[worker])
    finally:
        worker.stop()
        if outcome_failed():
            print(worker.describe(tail=20000))

    # The two batches went to two processes, in the order forced: the held batch committed,
    # the other committed the night's last photos and ended, and only then were the held
    # batch's files moved.
    notes = [line.split(" ", 1) for line in (signals / "notes").read_text().splitlines()]
    assert [what for _, what in notes] == [
        "held batch commits",
        "other batch commits",
        "held batch's moves wait",
        "other batch done",
        "held batch's moves go on",
    ] or [what for _, what in notes] == [
        "held batch commits",
        "held batch's moves wait",
        "other batch commits",
        "other batch done",
        "held batch's moves go on",
    ], notes
    pids = {what: pid for pid, what in notes}
    assert pids["held batch commits"] == pids["held batch's moves go on"]
    assert pids["other batch commits"] == pids["other batch done"] != pids["held batch commits"]

    assert (run.status, run.succeeded, run.failed, run.pending) == ("finished", 41, 0, 0)
    rows = all_predictions(settings)
    (held,) = [p for p in rows if p.content_hash == held_hash]
    assert (held.status, held.final_path) == (ItemStatus.OK, None)
    assert held.error.startswith("left where it is: could not move it to")
    assert files_under(settings.incoming_dir) == {HELD: held_hash}
    assert files_under(settings.processed_dir) == images | {
        HELD.parent: sha256((settings.processed_dir / HELD.parent).read_bytes())
    }
    check_rows_name_only_files_that_are_there(rows)
    check_csv_paths(sweep_csv(settings, run), rows)
    assert [p.name for p in settings.export_dir.iterdir()] == [sweep_csv(settings, run).name]


@pytest.mark.model
def test_the_stall_check_files_what_a_stopped_process_left_and_writes_the_csv(
    make_settings, classifier
):
    """A worker process stopped between its commit and its moves: its photos stay pending,
    so the night does not finish; the stall check moves their files, finishes the night and
    writes its CSV."""
    from refund_sorter.files import Folders
    from worker.pipeline import ProcessState, admit, predict, prepare, record

    settings = make_settings(sweep_stall_seconds=0.01)
    upgrade(settings.database_url)
    images = add_images(Incoming(settings.incoming_dir), 6, seed=304)
    published = []
    run = run_sweep(settings, dispatch=published.extend, trigger="manual").run
    sessions = session_factory(settings.database_url)
    state = ProcessState.sharing_cores()
    folders = Folders.of(settings)
    with sessions() as session:
        admitted, _, threshold = admit(
            published, classifier, session, settings, folders, state.applied
        )
    prepared = prepare(admitted, classifier, settings, state.decoders)
    classified = predict(prepared, classifier, threshold)
    # and stopped: nothing moved
    record(admitted, classified, threshold, settings, folders, sessions)

    with sessions() as session:
        stopped = crud.get_sweep(session, run.id)
    assert (stopped.status, stopped.succeeded, stopped.pending) == ("running", 6, 6)
    assert files_under(settings.incoming_dir) == images
    assert not settings.export_dir.exists()

    time.sleep(0.2)  # past the stall time
    assert resume_stalled_sweep(settings, dispatch=pytest.fail, queue_depth=lambda: 0) == 0

    with sessions() as session:
        settled = crud.get_sweep(session, run.id)
    assert (settled.status, settled.succeeded, settled.pending) == ("finished", 6, 0)
    assert files_under(settings.incoming_dir) == {}
    assert files_under(settings.processed_dir) == images
    rows = all_predictions(settings)
    check_rows_name_only_files_that_are_there(rows)
    check_csv_paths(sweep_csv(settings, settled), rows)
    assert len(read_csv(sweep_csv(settings, settled))) == 6
