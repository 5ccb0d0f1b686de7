"""The nightly trigger and the lock that keeps sweeps from overlapping.

Beat: the schedule follows REFUND_SORTER_SWEEP_CRON and REFUND_SORTER_TIMEZONE, names a task
that exists, and that task records a ``beat`` sweep and puts its images on the ``classify``
queue in Redis, up to 32 per message.

Lock: a running sweep makes the next one a recorded no-op; one that made no progress for
``sweep_stale_hours`` is abandoned and its leftovers go to the next sweep, never twice.
"""

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sweep_support import (
    REPO_ROOT,
    Incoming,
    add_images,
    add_unreadable,
    all_predictions,
    all_runs,
    check_csv_matches,
    files_under,
    get_run,
    queued_items,
    queued_messages,
    sweep_csv,
)

from models import SweepRun, utcnow
from producer.sweep import run_sweep
from refund_sorter import crud
from refund_sorter.celery_app import nightly_schedule, publish
from refund_sorter.crud import begin_sweep
from refund_sorter.db import session_factory
from refund_sorter.errors import UserError
from refund_sorter.messages import (
    CLASSIFY_QUEUE,
    CLASSIFY_TASK,
    IMAGES_PER_TASK,
    SWEEP_TASK,
    WorkItem,
)
from registry import registry
from worker.local import local_dispatch
from worker.pipeline import process_batch

# --------------------------------------------------------------------------------------- beat

SHOW_SCHEDULE = """
import json, worker
app = worker.app
app.loader.import_default_modules()  # what beat and the workers import
entry = app.conf.beat_schedule["nightly-sweep"]
cron = entry["schedule"]
print(json.dumps({
    "task": entry["task"], "kwargs": entry["kwargs"], "registered": entry["task"] in app.tasks,
    "queue": app.amqp.router.route({}, entry["task"])["queue"].name,
    "minute": sorted(cron.minute), "hour": sorted(cron.hour),
    "day_of_week": sorted(cron.day_of_week), "day_of_month": sorted(cron.day_of_month),
    "month_of_year": sorted(cron.month_of_year),
    "timezone": app.conf.timezone, "schedule_tz": str(cron.tz),
}))
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter whose only REFUND_SORTER_* settings are ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REFUND_SORTER_")}
    clean.update({f"REFUND_SORTER_{k}": v for k, v in env.items()})
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def show_schedule(**env: str) -> dict:
    proc = run_python(SHOW_SCHEDULE, **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_beat_runs_the_sweep_task_at_two_in_the_morning_utc_by_default():
    schedule = show_schedule()
    assert schedule == {
        "task": SWEEP_TASK,
        "kwargs": {"trigger": "beat"},
        "registered": True,
        "queue": "sweep",
        "minute": [0],
        "hour": [2],
        "day_of_week": list(range(7)),
        "day_of_month": list(range(1, 32)),
        "month_of_year": list(range(1, 13)),
        "timezone": "UTC",
        "schedule_tz": "UTC",
    }


def test_beat_schedule_and_timezone_follow_the_settings():
    schedule = show_schedule(SWEEP_CRON="30 1 * * 1-5", TIMEZONE="Europe/Berlin")
    assert (schedule["minute"], schedule["hour"], schedule["day_of_week"]) == (
        [30],
        [1],
        [1, 2, 3, 4, 5],
    )
    assert schedule["timezone"] == schedule["schedule_tz"] == "Europe/Berlin"
    assert schedule["task"] == SWEEP_TASK and schedule["registered"]


def test_a_bad_cron_expression_is_a_plain_error():
    cron = nightly_schedule("30 1 * * 1-5")
    assert (cron.minute, cron.hour, cron.day_of_week) == ({30}, {1}, {1, 2, 3, 4, 5})
    for bad in ("0 2 * *", "61 2 * * *", "0 25 * * *", "every night"):
        with pytest.raises(UserError, match="REFUND_SORTER_SWEEP_CRON"):
            nightly_schedule(bad)
    # Beat and the workers refuse to start with it, saying which setting is wrong.
    proc = run_python("import worker", SWEEP_CRON="0 25 * * *")
    assert proc.returncode != 0
    assert "REFUND_SORTER_SWEEP_CRON '0 25 * * *' is not valid" in proc.stderr


@pytest.mark.services
def test_publish_packs_up_to_32_images_per_message_in_order(producer_app, redis_client):
    items = [WorkItem(f"/incoming/{i:03d}.jpg", f"{i:064x}", "v1") for i in range(70)]
    items[40] = items[40].next_attempt()

    publish(items)

    messages = queued_messages(redis_client)
    assert IMAGES_PER_TASK == 32
    assert sorted(len(m["args"][0]) for m in messages) == [6, 32, 32]
    assert queued_items(redis_client) == items


@pytest.mark.model
@pytest.mark.services
def test_the_beat_task_records_a_beat_sweep_and_queues_its_images(
    fresh_pg_url, make_settings, producer_app, redis_client, monkeypatch, tiny_model
):
    import producer.tasks

    settings = make_settings(fresh_pg_url, broker_url=producer_app.conf.broker_url)
    monkeypatch.setattr(producer.tasks.sweep.app, "settings", settings)
    incoming = Incoming(settings.incoming_dir)
    images = add_images(incoming, 12, seed=41)
    unreadable = add_unreadable(incoming, seed=41)
    assert redis_client.llen(CLASSIFY_QUEUE) == 0

    result = producer.tasks.sweep.run(trigger="beat")

    (run,) = all_runs(settings)
    assert result == {"sweep_run": run.id, "status": "running", "enqueued": 13}
    assert (run.trigger, run.status, run.found, run.enqueued, run.failed, run.pending) == (
        "beat",
        "running",
        15,
        13,
        2,
        13,
    )
    truncated = next(rel for rel in unreadable if rel.name.startswith("truncated"))
    expected = {
        (str(settings.incoming_dir.absolute() / rel), content_hash, tiny_model.version)
        for rel, content_hash in {**images, truncated: unreadable[truncated][0]}.items()
    }
    messages = queued_messages(redis_client)
    assert len(messages) == 1  # 13 images: one message
    # A message names the files and their hashes, never the image bytes.
    assert {m["task"] for m in messages} == {CLASSIFY_TASK}
    items = queued_items(redis_client)
    assert len(items) == 13
    assert {(it.path, it.content_hash, it.model_version) for it in items} == expected
    assert {it.attempt for it in items} == {0}
    assert all(m["kwargs"] == {} for m in messages)
    # Until a worker is done with them, the images stay where they are.
    assert set(files_under(settings.incoming_dir)) == set(images) | {truncated}


# --------------------------------------------------------------------------------------- lock


def insert_running_sweep(settings, tiny_model) -> SweepRun:
    sessions = session_factory(settings.database_url)
    registry.ensure_serving_model(settings)  # a new install's first model: the tiny one
    run = begin_sweep(sessions, "beat")
    assert (run.status, run.model_version) == ("running", tiny_model.version)
    return run


@pytest.mark.model
@pytest.mark.services
def test_a_running_sweep_makes_the_next_one_a_recorded_no_op(
    fresh_pg_url, make_settings, tiny_model
):
    settings = make_settings(fresh_pg_url)
    holder = insert_running_sweep(settings, tiny_model)
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 5, seed=51)
    add_unreadable(incoming, seed=51)
    before = files_under(settings.incoming_dir)
    dispatched: list[WorkItem] = []

    report = run_sweep(settings, dispatch=dispatched.extend, trigger="manual")

    run = get_run(settings, report.run.id)
    assert run.status == "skipped"
    assert f"sweep {holder.id} still running" in run.message
    assert (run.found, run.enqueued, run.failed, run.known, run.pending) == (0, 0, 0, 0, 0)
    assert run.finished_at is not None
    assert dispatched == [] and report.enqueued == []
    assert files_under(settings.incoming_dir) == before
    assert all_predictions(settings) == []
    assert get_run(settings, holder.id).status == "running"
    assert not settings.export_dir.exists()


@pytest.mark.model
@pytest.mark.services
def test_a_stale_sweep_is_abandoned_and_its_queued_images_go_to_the_next(
    fresh_pg_url, make_settings, producer_app, redis_client, classifier, tiny_model
):
    settings = make_settings(fresh_pg_url, broker_url=producer_app.conf.broker_url)
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 6, seed=61)
    add_unreadable(incoming, seed=61)

    # The night's sweep publishes, and no worker is up to take the messages.
    first = run_sweep(settings, dispatch=publish, trigger="beat").run
    assert (first.status, first.enqueued) == ("running", 7)
    stale_items = queued_items(redis_client)
    assert len(stale_items) == 7

    # A sweep that is merely slow keeps the lock.
    assert run_sweep(settings, dispatch=publish, trigger="manual").run.status == "skipped"

    # No progress for longer than sweep_stale_hours: the next sweep takes over its images.
    sessions = session_factory(settings.database_url)
    with sessions.begin() as session:
        session.execute(
            update(SweepRun)
            .where(SweepRun.id == first.id)
            .values(updated_at=utcnow() - timedelta(hours=settings.sweep_stale_hours + 1))
        )
    third = run_sweep(settings, dispatch=local_dispatch(settings), trigger="manual").run

    abandoned = get_run(settings, first.id)
    assert abandoned.status == "abandoned" and "no progress" in abandoned.message
    done = get_run(settings, third.id)
    assert (done.status, done.found, done.enqueued, done.succeeded, done.failed, done.pending) == (
        "finished",
        7,
        7,
        6,
        1,
        0,
    )
    rows = all_predictions(settings)
    assert len(rows) == len({p.content_hash for p in rows}) == 9
    moved = [p for p in rows if p.sweep_run_id == third.id]
    assert len(moved) == 7 and {p.status for p in moved} == {"ok", "failed"}
    # The two files the first sweep judged itself stay with it, in its own CSV.
    kept = [p for p in rows if p.sweep_run_id == first.id]
    assert sorted(p.file_name for p in kept) == ["empty-61.jpg", "shopping-list-61.jpg"]
    check_csv_matches(sweep_csv(settings, abandoned), kept)
    assert files_under(settings.incoming_dir) == {}
    check_csv_matches(sweep_csv(settings, done), moved)

    # The first sweep's messages are still in Redis; a worker that takes them changes nothing.
    before = [(p.id, p.status, p.sweep_run_id, p.final_path, p.classified_at) for p in rows]
    processed = files_under(settings.processed_dir)
    outcome = process_batch(stale_items, classifier, settings)
    assert (outcome.ok, outcome.failed, outcome.ignored) == (0, 0, 7)
    after = [
        (p.id, p.status, p.sweep_run_id, p.final_path, p.classified_at)
        for p in all_predictions(settings)
    ]
    assert after == before
    assert files_under(settings.processed_dir) == processed
    assert get_run(settings, third.id).succeeded == 6


@pytest.mark.model
@pytest.mark.services
def test_two_sweeps_starting_at_the_same_moment_get_one_lock(fresh_pg_url, tiny_model):
    sessions = session_factory(fresh_pg_url)
    with sessions.begin() as session:
        crud.first_serving(
            session, version=tiny_model.version, file_name="tiny.pt", figures={}, by="tests"
        )
    for _ in range(5):
        barrier = threading.Barrier(2)

        def start(trigger: str, barrier=barrier) -> SweepRun:
            barrier.wait()
            return begin_sweep(sessions, trigger)

        with ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(start, ["beat", "manual"]))
        running = [r for r in runs if r.status == "running"]
        skipped = [r for r in runs if r.status == "skipped"]
        assert len(running) == len(skipped) == 1, [(r.id, r.status) for r in runs]
        assert {r.model_version for r in runs} == {tiny_model.version}
        assert f"sweep {running[0].id} still running" in skipped[0].message
        with sessions.begin() as session:
            session.execute(
                update(SweepRun).where(SweepRun.id == running[0].id).values(status="finished")
            )
    with sessions() as session:
        counts = dict(
            session.execute(select(SweepRun.status, func.count()).group_by(SweepRun.status)).all()
        )
    assert counts == {"finished": 5, "skipped": 5}
