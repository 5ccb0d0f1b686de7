"""A sweep that starts while another is still moving thousands of files waits its turn:
the one running sweep holds the lock until its files are where its rows say."""

import logging
import threading
import time
from collections import Counter

import pytest
from sweep_support import all_predictions, all_runs, files_under

import refund_sorter.files
from producer.sweep import run_sweep

pytestmark = pytest.mark.services


# -------------------------------------------------------------- two sweeps and thousands of moves


def test_a_sweep_started_while_another_moves_thousands_of_files_waits_for_it(
    fresh_pg_url, make_settings, monkeypatch, caplog
):
    settings = make_settings(fresh_pg_url)
    n = 2500
    for i in range(n):
        path = settings.incoming_dir / f"dock-{i % 5}" / f"slip-{i:05d}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"returns slip {i}\n")
    incoming = files_under(settings.incoming_dir)
    # The second sweep starts once the first has moved 100 files, and runs while it moves
    # the rest (slowed a little, as on a busy network share).
    second: dict = {}

    def start_second():
        try:
            second["run"] = run_sweep(
                settings, dispatch=second.setdefault("items", []).extend, trigger="manual"
            ).run
        except BaseException as exc:  # reported below, with the runs' messages
            second["error"] = exc

    other = threading.Thread(target=start_second)
    real_move, moved = refund_sorter.files.move, []

    def slow_move(src, dest):
        real_move(src, dest)
        moved.append(src)
        if len(moved) == 100:
            other.start()
        time.sleep(0.0005)

    monkeypatch.setattr(refund_sorter.files, "move", slow_move)
    caplog.set_level(logging.INFO)

    first = run_sweep(settings, dispatch=lambda items: None, trigger="beat").run
    other.join(timeout=60)

    runs = {r.id: r for r in all_runs(settings)}
    messages = [(r.id, r.status, r.message) for r in runs.values()]
    assert "error" not in second, (second["error"], messages)
    assert {r.status for r in runs.values()} == {"finished", "skipped"}, messages
    done = runs[first.id]
    assert (done.found, done.failed, done.skipped, done.pending) == (n, n, 0, 0)
    waited = runs[second["run"].id]
    assert waited.status == "skipped" and f"sweep {first.id} still running" in waited.message
    assert second["items"] == []
    rows = all_predictions(settings)
    assert Counter(p.original_path for p in rows) == Counter(
        str(settings.incoming_dir / rel) for rel in incoming
    )
    assert files_under(settings.incoming_dir) == {}
    assert files_under(settings.failed_dir) == incoming
    everything = caplog.text + "\n".join(str(m) for m in messages)
    for trace in ("FileNotFoundError", "No such file", "could not move"):
        assert trace not in everything

    # Nothing is left for the night after.
    after = run_sweep(settings, dispatch=lambda items: None, trigger="manual").run
    assert (after.status, after.found) == ("finished", 0)
