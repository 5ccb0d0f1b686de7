"""Photos still being written when the sweep reads them (a photo station copying them over a
slow network) are left in ``incoming/`` for a later sweep, never filed in ``failed/``; a
photo that decodes goes through at once however new it is; a damaged file that has stopped
changing is filed in ``failed/`` by the first sweep after the settle time.
"""

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sweep_support import (
    REPO_ROOT,
    Incoming,
    add_images,
    all_predictions,
    all_runs,
    backdate,
    check_csv_matches,
    files_under,
    image_bytes,
    local_sweep,
    read_csv,
    service_env,
    sha256,
    sweep_csv,
)

from cli import main

pytestmark = [pytest.mark.services, pytest.mark.model]

STATION = Path("station-1")


def write_in_pieces(
    files: dict[Path, bytes],
    first: dict[Path, int],
    started: threading.Event,
    go_on: threading.Event,
    pieces: int = 6,
    pause: float = 0.3,
) -> None:
    """Write each file through one open handle: its first ``first[path]`` bytes, then (once
    ``go_on`` is set) the rest in ``pieces`` pieces, ``pause`` seconds apart."""
    handles = {path: open(path, "wb") for path in files}  # noqa: SIM115 (closed below)
    try:
        for path, fh in handles.items():
            fh.write(files[path][: first[path]])
            fh.flush()
        started.set()
        go_on.wait(timeout=60)
        for i in range(1, pieces + 1):
            time.sleep(pause)
            for path, fh in handles.items():
                data, start = files[path], first[path]
                step = -(-(len(data) - start) // pieces)
                fh.write(data[start + (i - 1) * step : start + i * step])
                fh.flush()
    finally:
        for fh in handles.values():
            fh.close()


def refund_sorter(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "refund-sorter"), *args],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_photos_written_slowly_during_the_sweep_are_left_for_later_then_classified(
    fresh_pg_url, broker_url, make_settings, start_worker, use_settings
):
    settings = make_settings(fresh_pg_url, broker_url=broker_url, batch_size=4, torch_threads=1)
    start_worker(settings)
    incoming = Incoming(settings.incoming_dir)
    ready = add_images(incoming, 4, seed=111)  # complete, written just now: never delayed
    rng = np.random.default_rng(112)
    early, halfway = STATION / "early.jpg", STATION / "halfway.jpg"
    photos = {rel: image_bytes(rng, ".jpg", side=200) for rel in (early, halfway)}
    # The scan reads 300 bytes of one (not even a whole header: the producer finds out)
    # and half of the other (a whole header: the worker finds out).
    first = {early: 300, halfway: len(photos[halfway]) // 2}
    (settings.incoming_dir / STATION).mkdir()
    paths = {settings.incoming_dir / rel: data for rel, data in photos.items()}
    started, scanned = threading.Event(), threading.Event()
    writer = threading.Thread(
        target=write_in_pieces,
        args=(paths, {settings.incoming_dir / r: n for r, n in first.items()}, started, scanned),
    )
    writer.start()
    try:
        assert started.wait(timeout=30)
        night = subprocess.Popen(
            [str(Path(sys.executable).parent / "refund-sorter"), "sweep", "--wait"],
            env=service_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not any(r.found for r in all_runs(settings)):  # the scan is recorded
            assert night.poll() is None and time.monotonic() < deadline, night.communicate()
            time.sleep(0.05)
        scanned.set()  # the station goes on writing while the workers classify
        out, err = night.communicate(timeout=180)
    finally:
        scanned.set()
        writer.join(timeout=60)

    assert night.returncode == 0, out + err
    (run,) = all_runs(settings)
    # The night finishes: nothing stays queued, nothing failed, two files left for later.
    assert (run.status, run.found, run.enqueued, run.succeeded, run.failed, run.deferred) == (
        "finished",
        6,
        5,
        4,
        0,
        2,
    )
    assert run.pending == 0
    rows = all_predictions(settings)
    assert sorted(p.status for p in rows) == ["deferred"] * 2 + ["ok"] * 4
    assert {p.content_hash for p in rows if p.status == "ok"} == set(ready.values())
    later = {Path(p.original_path): p for p in rows if p.status == "deferred"}
    assert set(later) == {settings.incoming_dir / early, settings.incoming_dir / halfway}
    for p in later.values():
        assert p.final_path is None and "still being written" in p.error, p.error
        assert p.error.endswith("left in incoming/ for a later sweep")
    assert not settings.failed_dir.exists()
    # What the operator reads: the summary, the CSV and `runs`.
    assert "left for later 1 (still being written)" in out  # the producer's, at once
    assert "status finished: 4 classified, 0 failed, 0 known, 2 left for later, 0 still" in out
    for path, p in later.items():
        assert f"  left for later {path}: {p.error}" in out
    lines = read_csv(sweep_csv(settings, run))
    check_csv_matches(sweep_csv(settings, run), rows)
    assert sorted(line["status"] for line in lines).count("deferred") == 2
    use_settings(settings)
    runs = CliRunner().invoke(main, ["runs"])
    assert runs.exit_code == 0, runs.output
    header, line, note = runs.output.splitlines()
    assert header.split()[-2:] == ["later", "queued"]
    assert line.split()[-2:] == ["2", "0"]
    assert note.startswith("later: files still being written when the sweep read them")

    # The copies are complete: the next sweep classifies both, and files nothing as failed.
    assert files_under(settings.incoming_dir) == {rel: sha256(d) for rel, d in photos.items()}
    again = refund_sorter(settings, "sweep", "--wait")

    assert again.returncode == 0, again.stdout + again.stderr
    assert "status finished: 2 classified, 0 failed, 0 known, 0 left for later" in again.stdout
    assert files_under(settings.incoming_dir) == {}
    assert files_under(settings.processed_dir) == {
        **ready,
        **{rel: sha256(d) for rel, d in photos.items()},
    }
    assert not settings.failed_dir.exists()


def test_a_damaged_file_is_filed_in_failed_only_once_it_has_stopped_changing(
    fresh_pg_url, make_settings, classifier
):
    settings = make_settings(fresh_pg_url)
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 3, seed=113)
    empty = settings.incoming_dir / "empty.jpg"  # the producer finds out
    empty.write_bytes(b"")
    truncated = settings.incoming_dir / "truncated.jpg"  # the worker finds out
    data = image_bytes(np.random.default_rng(114), ".jpg", side=200)
    truncated.write_bytes(data[: len(data) // 2])

    first = local_sweep(settings, classifier)

    assert (first.status, first.succeeded, first.failed, first.deferred, first.pending) == (
        "finished",
        3,
        0,
        2,
        0,
    )
    later = {p.file_name: p for p in all_predictions(settings) if p.status == "deferred"}
    assert later["empty.jpg"].error.startswith("empty file; still being written (modified")
    assert later["truncated.jpg"].error.startswith("corrupt or truncated image: ")
    assert "; still being written (modified" in later["truncated.jpg"].error
    assert empty.exists() and truncated.exists() and not settings.failed_dir.exists()

    # Nothing has touched them for longer than the settle time: damaged, filed in failed/.
    backdate(empty, 121)
    backdate(truncated, 121)
    second = local_sweep(settings, classifier)

    assert (second.found, second.failed, second.deferred) == (2, 2, 0)
    failed = {p.file_name: p for p in all_predictions(settings) if p.sweep_run_id == second.id}
    assert failed["empty.jpg"].error == "empty file"
    assert failed["truncated.jpg"].error.startswith("corrupt or truncated image: ")
    assert set(files_under(settings.failed_dir)) == {Path("empty.jpg"), Path("truncated.jpg")}
    assert len(all_predictions(settings)) == 7  # the deferred rows stay, as history
    check_csv_matches(
        sweep_csv(settings, first),
        [
            *later.values(),
            *[
                p
                for p in all_predictions(settings)
                if p.sweep_run_id == first.id and p.status == "ok"
            ],
        ],
    )


def test_the_readme_first_command_leaves_the_damaged_sample_for_later(
    fresh_pg_url, make_settings, use_settings
):
    """The README copies the samples into incoming/ and sweeps at once: the damaged one was
    written moments ago, so it stays in incoming/; two minutes later a sweep files it."""
    settings = make_settings(fresh_pg_url)
    use_settings(settings)
    samples = sorted((REPO_ROOT / "assets" / "samples").glob("*"))
    for sample in samples:
        shutil.copy(sample, settings.incoming_dir)  # as `cp`: modified now

    first = CliRunner().invoke(main, ["sweep", "--local"], catch_exceptions=False)

    assert first.exit_code == 0, first.output
    assert f"status finished: {len(samples) - 1} classified, 0 failed, 0 known, 1 left" in (
        first.output
    )
    damaged = settings.incoming_dir / "damaged-upload.jpg"
    assert f"  left for later {damaged}: corrupt or truncated image" in first.output
    assert files_under(settings.incoming_dir).keys() == {Path("damaged-upload.jpg")}

    backdate(damaged, 121)
    second = CliRunner().invoke(main, ["sweep", "--local"], catch_exceptions=False)

    assert second.exit_code == 0, second.output
    assert "status finished: 0 classified, 1 failed, 0 known, 0 left for later" in (second.output)
    assert files_under(settings.failed_dir).keys() == {Path("damaged-upload.jpg")}
    assert files_under(settings.incoming_dir) == {}
