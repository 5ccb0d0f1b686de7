"""The classify worker, with its pool processes made to interleave a night's last two
batches the one way that used to write the night's CSV too early (test_night_csv.py).

Started as ``celery -A interleaved_worker worker --concurrency 2`` with this folder on the
path. The batch holding the photo whose content hash is ``TEST_HELD_HASH`` commits first and
then holds its moves; the other batch commits only after it (so it records the night's last
photos) and runs to its end; only then do the held moves go on. Each step is noted, with
the process id, in ``TEST_SIGNALS``/notes, for the test to check that it happened so.
"""

import os
import time
from pathlib import Path

from sqlalchemy import create_engine, text

import refund_sorter.files
import refund_sorter.images
import worker.pipeline
import worker.tasks
from worker import app  # noqa: F401 (the app ``celery -A`` loads)

HELD = os.environ["TEST_HELD_HASH"]
SIGNALS = Path(os.environ["TEST_SIGNALS"])
OTHER_DONE = SIGNALS / "other-batch-done"
WAIT_SECONDS = 60


def note(line: str) -> None:
    with open(SIGNALS / "notes", "a") as fh:
        fh.write(f"{os.getpid()} {line}\n")


def wait_until(ready, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not ready():
        if time.monotonic() > deadline:
            note(f"gave up waiting for {what}")
            return
        time.sleep(0.05)


def held_batch_committed() -> bool:
    engine = create_engine(os.environ["REFUND_SORTER_DATABASE_URL"])
    try:
        with engine.connect() as connection:
            return not connection.execute(
                text(
                    "SELECT count(*) FROM predictions WHERE content_hash = :h AND status = 'queued'"
                ),
                {"h": HELD},
            ).scalar()
    finally:
        engine.dispose()


real_record_results = worker.pipeline.record_results
real_process_batch = worker.tasks.process_batch
real_move = refund_sorter.files.move


def record_results(session, results):
    if all(r.content_hash != HELD for r in results):
        wait_until(held_batch_committed, "the held batch's commit")
        note("other batch commits")
    else:
        note("held batch commits")
    return real_record_results(session, results)


def process_batch(items, clf, settings, state=None):
    outcome = real_process_batch(items, clf, settings, state)
    if all(it.content_hash != HELD for it in items):
        note("other batch done")
        OTHER_DONE.touch()
    return outcome


def move(src, dest):
    if refund_sorter.images.sha256_file(src) == HELD:
        note("held batch's moves wait")
        wait_until(OTHER_DONE.exists, "the other batch's end")
        note("held batch's moves go on")
    return real_move(src, dest)


worker.pipeline.record_results = record_results
worker.tasks.process_batch = process_batch
refund_sorter.files.move = move
