"""Failed rows are history: each unreadable upload keeps its own row, a retried image gets
a fresh one, and a worker picks up a replaced model file on its own."""

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import Mock

import pytest
from sweep_support import (
    Incoming,
    add_images,
    all_predictions,
    backdate,
    files_under,
    get_run,
    local_sweep,
    read_csv,
    save_random_model,
    sweep_csv,
)

from producer.sweep import run_sweep
from refund_sorter.db import upgrade
from refund_sorter.messages import CLASSIFY_QUEUE, WorkItem, task_args
from worker.pipeline import process_batch

pytestmark = pytest.mark.model


def test_every_unreadable_upload_keeps_its_own_row(make_settings, classifier):
    settings = make_settings()
    upgrade(settings.database_url)
    for name in ("a.jpg", "b.jpg"):  # empty for an hour: damaged, not still being written
        (settings.incoming_dir / name).write_bytes(b"")
        backdate(settings.incoming_dir / name)
    first = local_sweep(settings, classifier)
    (settings.incoming_dir / "c.jpg").write_bytes(b"")
    backdate(settings.incoming_dir / "c.jpg")
    second = local_sweep(settings, classifier)

    rows = sorted(all_predictions(settings), key=lambda p: p.file_name)
    assert [(p.file_name, p.status, p.sweep_run_id) for p in rows] == [
        ("a.jpg", "failed", first.id),
        ("b.jpg", "failed", first.id),
        ("c.jpg", "failed", second.id),
    ]
    assert all(p.error == "empty file" for p in rows)
    assert (first.failed, second.failed) == (2, 1)
    assert sorted(p.name for p in settings.failed_dir.iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]


def test_an_image_that_failed_is_classified_when_put_back(make_settings, classifier):
    settings = make_settings()
    upgrade(settings.database_url)
    incoming = Incoming(settings.incoming_dir)
    (rel, content_hash), *_ = add_images(incoming, 1, seed=5).items()
    saved = (settings.incoming_dir / rel).read_bytes()
    items: list[WorkItem] = []
    run_sweep(settings, dispatch=items.extend, trigger="local")
    (settings.incoming_dir / rel).unlink()  # gone before a worker got to it
    process_batch(items, classifier, settings)

    (settings.incoming_dir / rel).write_bytes(saved)  # the operator puts it back
    retry = local_sweep(settings, classifier)

    rows = sorted(all_predictions(settings), key=lambda p: p.id)
    assert [(p.content_hash, p.status) for p in rows] == [
        (content_hash, "failed"),
        (content_hash, "ok"),
    ]
    assert (retry.enqueued, retry.succeeded) == (1, 1)
    assert Path(rows[1].final_path).is_file()


def test_a_worker_loads_each_model_from_the_store_as_its_tasks_ask(
    make_settings, tmp_path, monkeypatch, caplog
):
    import worker.tasks as tasks
    from registry import registry
    from registry.registry import NotInStore

    versions = [save_random_model(tmp_path / f"m{seed}.pt", seed=seed)[0] for seed in (1, 2, 3)]
    settings = make_settings(model_path=tmp_path / "m1.pt", device="cpu")
    upgrade(settings.database_url)
    monkeypatch.setattr(tasks.app, "settings", settings)
    monkeypatch.setattr(tasks.ClassifierTask, "_loaded", OrderedDict())
    task = tasks.classify
    real_warm_up, warmed = tasks.warm_up, []

    def warm_up(clf):
        warmed.append(clf.version)
        real_warm_up(clf)

    monkeypatch.setattr(tasks, "warm_up", warm_up)

    task.load_serving_model()  # as a process starts: the first serving model, m1
    assert list(task._loaded) == [versions[0]]
    for seed in (2, 3):
        registry.register(settings, tmp_path / f"m{seed}.pt", "anna", replace=True)
    (tmp_path / "m2.pt").unlink()  # read from the store, not from where it was registered

    # Registered, not serving: a task enqueued for it is classified by it all the same.
    assert task.classifier_for(versions[1]).version == versions[1]
    first = task.classifier_for(versions[0])
    assert task.classifier_for(versions[0]) is first  # kept, not loaded again
    assert task.classifier_for(versions[2]).version == versions[2]
    # Two models per process: the one used least recently (m2) was unloaded.
    assert list(task._loaded) == [versions[0], versions[2]]
    assert warmed == [versions[0], versions[1], versions[2]]  # each once, as it loaded
    assert "warm-up of model" not in caplog.text
    with pytest.raises(NotInStore, match="model 0123456789ab is not registered"):
        task.classifier_for("0123456789ab")


def test_a_warm_up_that_fails_only_says_so(caplog):
    import worker.tasks as tasks

    shapes = []

    def predict_tensors(batch):
        shapes.append((tuple(batch.shape), str(batch.dtype)))
        raise RuntimeError("no kernel for this machine")

    clf = SimpleNamespace(
        version="m1", checkpoint=SimpleNamespace(image_size=48), predict_tensors=predict_tensors
    )

    tasks.warm_up(clf)

    assert shapes == [((1, 3, 48, 48), "torch.uint8")]
    assert "warm-up of model m1 failed: no kernel for this machine" in caplog.text


def test_a_batch_that_fails_is_put_back_on_the_queue_with_a_growing_countdown(
    make_settings, classifier, monkeypatch, tmp_path
):
    import worker.tasks as tasks

    settings = make_settings(retry_delay=60, retry_limit=4)
    upgrade(settings.database_url)
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 3, seed=8)
    items: list[WorkItem] = []
    run = run_sweep(settings, dispatch=items.extend, trigger="local").run
    published, queues = [], set()

    def publish(items, countdown, queue):
        published.append((items, countdown))
        queues.add(queue)

    monkeypatch.setattr(tasks, "publish", publish)
    # The worker's database has no tables: storing the batch raises, as it would with the
    # server down.
    broken = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'empty.db'}"})
    monkeypatch.setattr(tasks.app, "settings", broken)
    loaded = OrderedDict({classifier.version: classifier})
    monkeypatch.setattr(tasks.ClassifierTask, "_loaded", loaded)

    def requests_for(batch: list[WorkItem]):
        # Two tasks, as two messages of one batch
        return [
            SimpleNamespace(id=f"task-{i}", args=task_args(part), hostname="w1@test")
            for i, part in enumerate((batch[:2], batch[2:]))
        ]

    tasks.classify.run(requests_for(items))
    assert published == [([replace(it, attempt=1) for it in items], 60)]
    # Each retry carries its attempt and waits twice as long as the one before.
    for attempt, countdown in ((1, 120), (2, 240), (3, 480)):
        retried, _ = published[-1]
        assert [it.attempt for it in retried] == [attempt] * 3
        tasks.classify.run(requests_for(retried))
        assert published[-1] == ([replace(it, attempt=attempt + 1) for it in items], countdown)
    assert queues == {CLASSIFY_QUEUE}  # a night's retries go back to the night's queue
    # Nothing was stored or moved: the rows wait for the retry, the files stay in incoming/.
    assert [p.status for p in all_predictions(settings)] == ["queued"] * 3
    assert get_run(settings, run.id).pending == 3
    assert files_under(settings.incoming_dir) == incoming.images
    assert files_under(settings.processed_dir) == files_under(settings.failed_dir) == {}

    # The retries are used up, and the database is down too: the messages are dropped and
    # the rows stay queued, for the stall check to publish again once it is back.
    tasks.classify.run(requests_for(published[-1][0]))
    assert len(published) == 4
    assert [p.status for p in all_predictions(settings)] == ["queued"] * 3


def test_a_batch_that_used_up_its_retries_is_marked_failed_and_its_files_stay(
    make_settings, classifier, monkeypatch
):
    import worker.tasks as tasks

    settings = make_settings(retry_limit=2)
    upgrade(settings.database_url)
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 3, seed=9)
    items: list[WorkItem] = []
    run = run_sweep(settings, dispatch=items.extend, trigger="local").run
    monkeypatch.setattr(tasks, "publish", lambda *a, **kw: pytest.fail("published"))
    monkeypatch.setattr(tasks.app, "settings", settings)
    loaded = OrderedDict({classifier.version: classifier})
    monkeypatch.setattr(tasks.ClassifierTask, "_loaded", loaded)
    monkeypatch.setattr(
        tasks, "process_batch", Mock(side_effect=OSError("No space left on device"))
    )
    requests = [
        SimpleNamespace(
            id="task-0", args=task_args([replace(it, attempt=2) for it in items]), hostname="w"
        )
    ]

    tasks.classify.run(requests)

    rows = all_predictions(settings)
    assert [p.status for p in rows] == ["failed"] * 3
    assert all(
        p.error == "not classified after 3 attempts: OSError: No space left on device"
        and p.final_path is None
        for p in rows
    )
    done = get_run(settings, run.id)
    assert (done.status, done.failed, done.pending) == ("finished", 3, 0)
    assert files_under(settings.incoming_dir) == incoming.images
    assert len(read_csv(sweep_csv(settings, done))) == 3
