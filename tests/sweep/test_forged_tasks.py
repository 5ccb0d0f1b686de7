"""Anyone who reaches Redis can send classify tasks. A worker acts only on a path that
resolves inside ``incoming/`` and is queued, under exactly that path, for the task's hash
and model; anything else is refused and logged, and the genuine image stays queued for
its genuine task."""

import logging
import os
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pytest
from api_support import record_counter_photo
from sweep_support import Incoming, add_images, all_predictions, files_under, get_run

import worker.events
from producer.sweep import run_sweep
from refund_sorter.messages import WorkItem, task_args
from worker.pipeline import process_batch

pytestmark = [pytest.mark.services, pytest.mark.model]


@pytest.fixture
def enqueued(fresh_pg_url, make_settings, tmp_path):
    """A sweep over four images, dispatched but not yet processed, and a folder outside
    the configured ones holding a copy of the first image."""
    settings = make_settings(fresh_pg_url)
    add_images(Incoming(settings.incoming_dir), 4, seed=91)
    items: list[WorkItem] = []
    run = run_sweep(settings, dispatch=items.extend, trigger="manual").run
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "copy.jpg").write_bytes(Path(items[0].path).read_bytes())
    return settings, run, items, outside


def state(settings) -> tuple[list, dict, dict, dict]:
    rows = [
        (p.content_hash, p.status, p.original_path, p.final_path) for p in all_predictions(settings)
    ]
    return (
        rows,
        files_under(settings.incoming_dir),
        files_under(settings.processed_dir),
        files_under(settings.failed_dir),
    )


def forgeries(settings, items, outside) -> list[WorkItem]:
    """Tasks naming the first image's hash, none of them the path the producer queued."""
    genuine, other = items[0], items[1]
    incoming = settings.incoming_dir
    (incoming / "link.jpg").symlink_to(outside / "copy.jpg")
    version = genuine.model_version

    def forged(path) -> WorkItem:
        return WorkItem(str(path), genuine.content_hash, version)

    return [
        forged(outside / "copy.jpg"),  # a copy outside incoming/
        forged(f"{incoming}/../outside/copy.jpg"),  # ".." out of incoming/
        forged(f"{incoming}/x/../{Path(genuine.path).relative_to(incoming)}"),  # ".." back in
        forged("/etc/passwd"),
        forged(incoming / "link.jpg"),  # a symlink in incoming/ to a file outside
        forged(other.path),  # another queued image's path
        forged(f"{incoming}/nul\x00.jpg"),  # cannot even be resolved
    ]


def test_forged_tasks_are_refused_and_change_nothing(enqueued, classifier, caplog):
    settings, run, items, outside = enqueued
    forged = forgeries(settings, items, outside)
    before = state(settings)
    caplog.set_level(logging.INFO, logger="worker.pipeline")

    outcome = process_batch(forged, classifier, settings)

    assert (outcome.ok, outcome.failed, outcome.ignored, outcome.refused) == (0, 0, 0, 7)
    assert state(settings) == before
    assert {p.status for p in all_predictions(settings)} == {"queued"}
    assert (outside / "copy.jpg").is_file() and (settings.incoming_dir / "link.jpg").is_symlink()
    assert get_run(settings, run.id).pending == 4
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(refusals) == 7 and all(r.levelno == logging.WARNING for r in refusals)

    # The genuine tasks then do the work, as if nothing had happened.
    assert process_batch(items, classifier, settings).ok == 4
    assert get_run(settings, run.id).status == "finished"


def test_forged_tasks_in_a_genuine_batch_do_not_disturb_it(enqueued, classifier):
    settings, run, items, outside = enqueued

    outcome = process_batch([*forgeries(settings, items, outside), *items], classifier, settings)

    assert (outcome.ok, outcome.refused) == (4, 7)
    rows = all_predictions(settings)
    assert {p.status for p in rows} == {"ok"}
    processed = settings.processed_dir.resolve()
    for p in rows:
        assert ".." not in Path(p.final_path).parts and ".." not in Path(p.original_path).parts
        assert Path(p.final_path).is_relative_to(processed)
        assert Path(p.final_path).is_file()
    assert (outside / "copy.jpg").is_file()  # the outside copy was never moved
    assert files_under(settings.incoming_dir) == {Path("link.jpg"): items[0].content_hash}
    assert get_run(settings, run.id).status == "finished"


def test_an_incoming_folder_reached_through_a_symlink_still_works(
    fresh_pg_url, make_settings, classifier, tmp_path
):
    # Operators often mount the share elsewhere and link it: /data/incoming -> /mnt/returns.
    real = make_settings(fresh_pg_url, incoming_dir=tmp_path / "mnt" / "returns")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "incoming").symlink_to(real.incoming_dir, target_is_directory=True)
    settings = real.model_copy(update={"incoming_dir": tmp_path / "data" / "incoming"})
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 3, seed=92)
    items: list[WorkItem] = []
    run = run_sweep(settings, dispatch=items.extend, trigger="manual").run

    assert process_batch(items, classifier, settings).ok == 3

    assert get_run(settings, run.id).status == "finished"
    assert files_under(settings.processed_dir) == incoming.images
    assert files_under(real.incoming_dir) == {}


def test_a_malformed_task_is_refused_without_failing_its_batch(enqueued, classifier, monkeypatch):
    import worker.tasks as tasks

    settings, run, items, _ = enqueued
    monkeypatch.setattr(tasks.app, "settings", settings)
    loaded = OrderedDict({classifier.version: classifier})
    monkeypatch.setattr(tasks.ClassifierTask, "_loaded", loaded)
    republished = []
    monkeypatch.setattr(tasks, "publish", lambda *a, **kw: republished.append(a))
    events, flushes, made = [], [], []

    def dispatcher(connection, hostname, **options):
        made.append(hostname)
        return SimpleNamespace(
            send=lambda kind, **fields: events.append((kind, fields)),
            flush=lambda: flushes.append(len(events)),
            pid=os.getpid(),
        )

    monkeypatch.setattr(worker.events, "_held", {})
    monkeypatch.setattr(tasks.app.events, "Dispatcher", dispatcher)
    good = task_args(items)[0]
    args = [
        # the genuine items, with a forged entry missing an argument and one of numbers
        [[*good[:2], items[0].as_args()[:2], *good[2:], [1, 2, 3]]],
        items[0].as_args(),  # one image's arguments, not a list of them
        "not a list",
        [good * 9],  # 36 entries: more than a task holds
    ]
    requests = [
        SimpleNamespace(id=f"task-{i}", args=a, hostname="w1@test") for i, a in enumerate(args)
    ]

    tasks.classify.run(requests)

    assert republished == []
    assert {p.status for p in all_predictions(settings)} == {"ok"}
    assert get_run(settings, run.id).status == "finished"
    assert flushes == [len(events)]  # the batch's events go out together, once
    results = {f["uuid"]: f["result"] for kind, f in events if kind == "task-succeeded"}
    assert results == {
        "task-0": "{'ok': 4, 'refused': 2}",
        "task-1": "{'refused': 1}",
        "task-2": "{'refused': 1}",
        "task-3": "{'refused': 1}",
    }
    # The next batch reports through the same dispatcher: one per process, not per batch.
    tasks.classify.run(requests[:1])
    assert made == ["w1@test"] and flushes == [12, 15]
    assert events[-1][1]["result"] == "{'ignored': 4, 'refused': 2}"


def test_forged_tasks_into_the_returns_counter_s_folder_are_refused(
    fresh_pg_url, make_settings, classifier, tmp_path
):
    """The workers take photos from the counter's folder too, on the same rule: a path that
    resolves inside it and the one ``queued`` row for exactly that path, hash and model."""
    from registry.registry import serving_version

    settings = make_settings(fresh_pg_url)
    version = serving_version(settings)
    counter = settings.counter_dir.absolute()
    counter.mkdir(parents=True)
    source = Incoming(tmp_path / "made")
    [(rel, content_hash)] = add_images(source, 1, seed=93).items()
    path = counter / f"{content_hash}{rel.suffix}"
    path.write_bytes((source.root / rel).read_bytes())
    record_counter_photo(settings, path, content_hash)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "copy.jpg").write_bytes(path.read_bytes())
    (counter / "link.jpg").symlink_to(outside / "copy.jpg")
    (counter / "other.jpg").write_bytes(path.read_bytes())

    def forged(where) -> WorkItem:
        return WorkItem(str(where), content_hash, version)

    forgeries = [
        forged(outside / "copy.jpg"),  # a copy outside the counter's folder
        forged(f"{counter}/../outside/copy.jpg"),  # ".." out of it
        forged(counter / "link.jpg"),  # a symlink in it to a file outside
        forged(counter / "other.jpg"),  # another name in it: not what is queued
        forged(counter),  # the folder itself
    ]
    before = state(settings), files_under(counter)

    outcome = process_batch(forgeries, classifier, settings)

    assert (outcome.ok, outcome.failed, outcome.refused) == (0, 0, 5)
    assert (state(settings), files_under(counter)) == before
    [row] = all_predictions(settings)
    assert row.status == "queued"

    # The genuine task: classified and filed in processed/counter/, as its row says.
    assert process_batch([forged(path)], classifier, settings).ok == 1
    [row] = all_predictions(settings)
    assert row.status == "ok"
    assert row.final_path == str(settings.processed_dir.resolve() / "counter" / path.name)
    assert Path(row.final_path).is_file() and not path.exists()
    assert (outside / "copy.jpg").is_file() and (counter / "other.jpg").is_file()
