"""Faults of the broker and the workers, for real: a Redis of the test's own killed with
kill -9 mid-sweep (restarted from its append-only file, or empty), a worker killed with
SIGKILL mid-batch, a batch that fails every time, a model file that cannot be loaded.

Every photo ends settled, none lost, none twice, within minutes of the fault. Each test prints
its figures (``pytest -s``): photos, fault, rows lost, rows duplicated, seconds to settle.

The settings are short so the suite runs in seconds: the stall check runs every second and
acts after 5 s without progress (defaults: every 60 s, after 120 s), retries wait 1, 2 and
4 s (defaults: 60, 120, 240 and 480 s).
"""

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from kombu.asynchronous.timer import Timer
from sqlalchemy import text
from sweep_support import (
    BeatProcess,
    Incoming,
    ServiceProcess,
    WorkerProcess,
    add_images,
    all_predictions,
    check_finished_sweep,
    files_under,
    get_run,
    queued_items,
    read_csv,
    service_env,
    settled_after,
    sweep_csv,
    wait_for_progress,
    wait_for_run,
    wait_for_workers,
)

from models import ItemStatus
from producer.sweep import run_sweep
from refund_sorter.celery_app import publish
from refund_sorter.db import get_engine
from refund_sorter.messages import CLASSIFY_QUEUE, IMAGES_PER_TASK, SWEEP_QUEUE

# The stall check every second, after 5 s without progress.
QUICK_STALL_CHECK = {"sweep_stall_seconds": 5, "sweep_stall_check_seconds": 1}


class Stack:
    """One test's settings (its own PostgreSQL database and Redis) and the Celery processes
    it starts, stopped at the end with their logs printed if the test failed."""

    def __init__(self, settings, logs: Path, app) -> None:
        self.settings = settings
        self.logs = logs
        self.app = app
        self.processes: list[ServiceProcess] = []

    def worker(self, name: str, queues: str | None = None) -> WorkerProcess:
        env = service_env(self.settings)
        worker = WorkerProcess(f"{name}@faults", env, self.logs / f"{name}.log", queues)
        self.processes.append(worker)
        return worker

    def beat(self) -> BeatProcess:
        beat = BeatProcess(service_env(self.settings), self.logs / "beat.log")
        self.processes.append(beat)
        return beat

    def ready(self, *workers: WorkerProcess) -> None:
        wait_for_workers(self.app, list(workers))


@pytest.fixture
def make_stack(
    fresh_pg_url, make_settings, redis_server, own_producer_app, tmp_path, outcome_failed
):
    stacks: list[Stack] = []

    def make(**overrides) -> Stack:
        settings = make_settings(
            fresh_pg_url,
            broker_url=redis_server.url,
            batch_size=8,
            batch_max_wait=0.5,
            torch_threads=1,
            **overrides,
        )
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        stacks.append(Stack(settings, logs, own_producer_app))
        return stacks[-1]

    yield make
    for stack in stacks:
        for process in stack.processes:
            process.stop()
            if outcome_failed():
                print(process.describe(tail=20000))


def test_the_flush_timer_is_armed_again_after_a_reconnect(monkeypatch):
    """What a reconnect does to celery-batches' timer, without a broker: Celery clears the
    consumer's timer and calls Strategy() again. Requests still in the buffers (a partial
    batch, a retry waiting for its countdown) get a timer on the new consumer at once."""
    import worker.tasks as tasks

    task = tasks.classify
    monkeypatch.setattr(task, "_tref", None)
    monkeypatch.setattr(task, "_buffer", type(task._buffer)())
    monkeypatch.setattr(task, "_pending", type(task._pending)())

    def consumer():
        pool = SimpleNamespace(apply_async=lambda *args, **kwargs: None)
        return SimpleNamespace(
            pool=pool, hostname="w@test", connection_errors=(), event_dispatcher=None, timer=Timer()
        )

    before = consumer()
    task.start_strategy(task.app, before)
    assert task._tref is None and not before.timer.queue  # armed by the first message only
    task._tref = before.timer.call_repeatedly(task.flush_interval, task._do_flush)
    task._pending.put("a retry waiting for its countdown")
    before.timer.clear()  # Consumer.on_close, on losing the broker

    after = consumer()
    task.start_strategy(task.app, after)

    assert task._tref is not None and task._tref.cancelled is False
    assert [entry.fun for _, _, entry in after.timer.queue] == [task._tref.fun]
    assert before.timer.queue == []
    task._tref.cancel()


REPUBLISHED = re.compile(r"publishing its (\d+) queued images again")


def published_again(*workers: ServiceProcess) -> int:
    """How many images the stall check published again, from the workers' logs."""
    return sum(int(n) for w in workers for n in REPUBLISHED.findall(w.log()))


@pytest.mark.model
@pytest.mark.services
def test_a_redis_restart_mid_sweep_strands_no_batch(make_stack, redis_server, tiny_model):
    """Redis (append-only, an fsync per write) killed with kill -9 after 64 of 300 photos and
    restarted 5 s later: the worker reconnects, flushes the batch it was filling and takes the
    rest. Beat's stall check runs as in production: it publishes again only what the kill
    itself lost (a message Redis had handed out, between its pop and the worker's receipt),
    never a batch the worker held back; the test above checks the timer without that net."""
    stack = make_stack(**QUICK_STALL_CHECK)
    settings = stack.settings
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 300, seed=71)
    worker = stack.worker("w1")
    stack.beat()
    stack.ready(worker)
    run = run_sweep(settings, dispatch=publish, trigger="manual").run

    done_before = wait_for_progress(settings, run.id, 64)
    fault = time.monotonic()
    redis_server.kill()
    time.sleep(5)
    redis_server.start()

    settled = settled_after(
        settings,
        run.id,
        incoming,
        "Redis kill -9, restarted 5 s later from its AOF",
        fault,
        [worker],
    )
    print(f"published again by the stall check: {published_again(worker)}")
    assert done_before < 300, "the sweep was over before the fault"
    assert "Connection to broker lost" in worker.log()
    assert (settled.lost, settled.duplicated) == (0, 0)
    assert settled.seconds < 300
    check_finished_sweep(settings, run.id, incoming, tiny_model.taxonomy)


@pytest.mark.model
@pytest.mark.services
def test_a_redis_restarted_empty_is_caught_up_by_the_stall_check(
    make_stack, redis_server, tiny_model
):
    """Redis killed after 40 of 200 photos and restarted 3 s later without its data: the
    queued rows have no message left. Beat's stall check publishes them again, and the sweep
    finishes with its CSV."""
    stack = make_stack(**QUICK_STALL_CHECK)
    settings = stack.settings
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 200, seed=72)
    worker = stack.worker("w1")
    stack.beat()
    stack.ready(worker)
    run = run_sweep(settings, dispatch=publish, trigger="manual").run

    done_before = wait_for_progress(settings, run.id, 40)
    fault = time.monotonic()
    redis_server.kill()
    redis_server.wipe()
    time.sleep(3)
    redis_server.start()

    settled = settled_after(
        settings, run.id, incoming, "Redis kill -9, restarted empty 3 s later", fault, [worker]
    )
    assert done_before < 200, "the sweep was over before the fault"
    print(f"published again by the stall check: {published_again(worker)}")
    assert published_again(worker) > 0
    assert (settled.lost, settled.duplicated) == (0, 0)
    assert settled.seconds < 300
    check_finished_sweep(settings, run.id, incoming, tiny_model.taxonomy)  # CSV included


def kill_a_worker_mid_sweep(stack: Stack, redis_server, photos: int, seed: int):
    """Start a sweep on worker w1, SIGKILL it after a fifth of the photos while it holds
    photos it has not stored yet, and start w2 at once.

    The worker is stopped (SIGSTOP) for a moment first, only to pick that moment: with nothing
    moving, the photos still queued in the table but not waiting in the queue are the ones it
    holds (a batch committed and not yet filed is no longer queued; a task in the queue counts
    as a full one, so that what is left is surely held). It may hold none, having just
    stored a batch: then it runs on and is tried again.
    """
    settings = stack.settings
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, photos, seed=seed)
    first = stack.worker("w1")
    stack.ready(first)
    run = run_sweep(settings, dispatch=publish, trigger="manual").run
    done_before = wait_for_progress(settings, run.id, photos // 5)
    queue = redis_server.client()
    for _ in range(100):
        os.killpg(first.proc.pid, signal.SIGSTOP)
        time.sleep(0.2)  # a commit already sent lands meanwhile
        queued = sum(p.status == "queued" for p in all_predictions(settings))
        # A task in the queue carries up to IMAGES_PER_TASK photos: any queued beyond that
        # many a task are in tasks the worker holds unacked.
        held = queued - IMAGES_PER_TASK * queue.llen(CLASSIFY_QUEUE)
        if held > 0:
            break
        os.killpg(first.proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    fault = time.monotonic()
    first.kill()
    second = stack.worker("w2")
    print(f"the killed worker held {held} photos it had not stored")
    assert done_before < photos, "the sweep was over before the fault"
    assert held > 0, "the worker never held a photo it had not stored"
    return incoming, run, fault, (first, second)


def check_every_file_filed_once(settings, incoming: Incoming) -> None:
    """A worker killed between a batch's commit and its files' moves leaves those files in
    incoming/ with their rows ``ok``: the next sweep files them without classifying again."""
    again = run_sweep(settings, dispatch=publish, trigger="manual").run
    assert (again.status, again.enqueued) == ("finished", 0)
    assert files_under(settings.incoming_dir) == {}
    assert files_under(settings.processed_dir) == incoming.images


@pytest.mark.model
@pytest.mark.services
def test_a_worker_killed_mid_batch_is_replaced_and_its_photos_settled(make_stack, redis_server):
    """The worker holds its prefetched messages unacked when it is killed; Redis would hand
    them out again only after the visibility timeout (20 minutes). Beat's stall check
    publishes them again once the sweep stalls."""
    stack = make_stack(**QUICK_STALL_CHECK)
    stack.beat()
    incoming, run, fault, workers = kill_a_worker_mid_sweep(stack, redis_server, 200, seed=73)

    settled = settled_after(
        stack.settings, run.id, incoming, "worker SIGKILL mid-batch, new worker", fault, workers
    )
    print(f"published again by the stall check: {published_again(*workers)}")
    assert published_again(*workers) > 0
    assert (settled.lost, settled.duplicated) == (0, 0)
    assert settled.seconds < 300
    assert get_run(stack.settings, run.id).succeeded == 200
    check_every_file_filed_once(stack.settings, incoming)


@pytest.mark.model
@pytest.mark.services
def test_sweep_wait_follows_the_running_sweep_after_a_worker_was_killed(make_stack, redis_server):
    """The operator runs ``refund-sorter sweep --wait`` after a worker died: the new sweep is
    skipped, the command says so, follows the running one (its own stall check publishing
    the dead worker's photos again, no beat here) and prints how it ended."""
    stack = make_stack(**QUICK_STALL_CHECK)
    incoming, run, fault, workers = kill_a_worker_mid_sweep(stack, redis_server, 200, seed=74)

    cli = subprocess.run(
        [str(Path(sys.executable).parent / "refund-sorter"), "sweep", "--wait", "--timeout", "300"],
        env=service_env(stack.settings),
        capture_output=True,
        text=True,
        timeout=330,
    )

    assert cli.returncode == 0, cli.stdout + cli.stderr
    out = cli.stdout
    print(out)
    assert re.search(rf"sweep \d+ skipped: sweep {run.id} still running", out), out
    assert f"following sweep {run.id} instead" in out
    assert f"sweep {run.id} stalled: its queued images were published again" in out
    assert "status finished: 200 classified, 0 failed" in out
    assert str(sweep_csv(stack.settings, get_run(stack.settings, run.id))) in out
    settled = settled_after(
        stack.settings, run.id, incoming, "worker SIGKILL, then sweep --wait", fault, workers
    )
    assert (settled.lost, settled.duplicated) == (0, 0)
    assert settled.seconds < 300
    check_every_file_filed_once(stack.settings, incoming)


FAILED_LINE = re.compile(
    r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ERROR/[^\]]*\] "
    r"batch of (\d+) failed on attempt (\d+)"
)
REFUSE_RESULTS = """
CREATE FUNCTION refuse_results() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$;
CREATE TRIGGER refuse_results BEFORE UPDATE ON predictions
FOR EACH ROW WHEN (NEW.status = 'ok') EXECUTE FUNCTION refuse_results();
"""


@pytest.mark.model
@pytest.mark.services
def test_a_batch_that_fails_every_time_is_retried_with_growing_delays_then_marked_failed(
    make_stack,
):
    """The database refuses to store results (a trigger stands in for a full disk): the batch
    is retried after 1, 2 and 4 s, then its rows are marked failed with the reason and the
    photos stay in incoming/. The stall check (after 2 s here, shorter than the last
    countdown) does not publish the photos again while their retry waits. Once the database
    takes writes again, the next sweep classifies them."""
    stack = make_stack(
        retry_delay=1, retry_limit=3, sweep_stall_seconds=2, sweep_stall_check_seconds=1
    )
    settings = stack.settings
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(text(REFUSE_RESULTS))
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 8, seed=75)
    worker = stack.worker("w1")
    # Beat's stall checks start once the model is loaded: a sweep published while the only
    # worker is still loading it makes no progress, and would be published again.
    worker.wait_for_log("loaded model")
    stack.beat()
    stack.ready(worker)

    started = time.monotonic()
    run = run_sweep(settings, dispatch=publish, trigger="manual").run
    settled = settled_after(
        settings,
        run.id,
        incoming,
        "every batch fails (database refuses results)",
        started,
        [worker],
        expect=ItemStatus.FAILED,
    )

    assert (settled.lost, settled.duplicated) == (0, 0)
    rows = all_predictions(settings)
    assert len(rows) == 8 and {p.status for p in rows} == {"failed"}
    for p in rows:
        assert p.error.startswith("not classified after 4 attempts: "), p.error
        assert "No space left on device" in p.error
        assert p.final_path is None and p.classified_at is not None
    assert files_under(settings.incoming_dir) == incoming.images
    assert files_under(settings.processed_dir) == {}
    done = get_run(settings, run.id)
    assert (done.status, done.failed, done.pending) == ("finished", 8, 0)
    assert len(read_csv(sweep_csv(settings, done))) == 8

    # Tried 4 times each, the waits between tries growing: 1, 2, then 4 s.
    first_seen: dict[int, datetime] = {}
    items_per_attempt: dict[int, int] = defaultdict(int)
    for stamp, size, attempt in FAILED_LINE.findall(worker.log()):
        first_seen.setdefault(int(attempt), datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f"))
        items_per_attempt[int(attempt)] += int(size)
    assert dict(items_per_attempt) == {1: 8, 2: 8, 3: 8, 4: 8}
    waits = [(first_seen[k + 1] - first_seen[k]).total_seconds() for k in (1, 2, 3)]
    print(f"waits between attempts: {', '.join(f'{w:.1f} s' for w in waits)}")
    assert all(w >= countdown for w, countdown in zip(waits, (1, 2, 4), strict=True)), waits
    assert waits[0] < waits[1] < waits[2]
    assert "publishing its" not in worker.log(), "the stall check published a retry again"

    with get_engine(settings.database_url).begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_results ON predictions"))
    again = run_sweep(settings, dispatch=publish, trigger="manual").run
    assert again.enqueued == 8
    assert wait_for_run(settings, again.id, timeout=120, logs=[worker]).succeeded == 8
    assert files_under(settings.processed_dir) == incoming.images


@pytest.mark.model
@pytest.mark.services
def test_a_worker_whose_model_cannot_be_loaded_takes_no_images(make_stack, redis_server):
    """The serving model's file in the model store is damaged: the worker says why at start
    and stops consuming the classify queue; the photos wait there for a worker that can
    classify them. A worker that only sweeps (``-Q sweep``, as the producer runs) does not
    try to load the model."""
    stack = make_stack()
    settings = stack.settings
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 12, seed=76)
    run = run_sweep(settings, dispatch=publish, trigger="manual").run
    assert run.enqueued == 12
    broken = settings.model_store / f"{run.model_version}.pt"
    broken.write_bytes(b"half of a download\n")

    worker = stack.worker("w1")  # messages are waiting as it starts
    sweeper = stack.worker("sweeper", queues=SWEEP_QUEUE)
    worker.wait_for_log(f"stopped consuming the {CLASSIFY_QUEUE} queue")
    stack.ready(worker, sweeper)

    log = worker.log()
    assert f"cannot load the model {broken}" in log
    assert "is not a refund-sorter checkpoint" in log
    assert "this worker takes no images until it is restarted" in log
    assert "batch of" not in log
    queues = stack.app.control.inspect([worker.name], timeout=5).active_queues()
    assert [q["name"] for q in queues[worker.name]] == [SWEEP_QUEUE]
    # Whatever it took before it stopped consuming, it put back: all 12 wait in the queue.
    redis = redis_server.client()
    deadline = time.monotonic() + 10
    while len(queued_items(redis)) != 12 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2 * settings.batch_max_wait)
    waiting = queued_items(redis)
    print(
        f"FAULT model file cannot be loaded: 12 photos, {len(waiting)} still in the queue, "
        f"{sum(p.status != 'queued' for p in all_predictions(settings))} rows touched"
    )
    assert len({it.content_hash for it in waiting}) == len(waiting) == 12
    assert {p.status for p in all_predictions(settings)} == {"queued"}
    assert get_run(settings, run.id).pending == 12
    assert files_under(settings.incoming_dir) == incoming.images
    assert "cannot load the model" not in sweeper.log()
