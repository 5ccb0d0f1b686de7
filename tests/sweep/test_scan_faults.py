"""One file never stops the night: a file the service user cannot read, one that vanishes
or turns into something else while the sweep looks at it, a link, a pipe, a file that
cannot be moved; and a sweep that starts while another is still moving thousands of files.

The sweep that meets a permission problem runs as an unprivileged user (the tests run as
root, which reads any file whatever its mode), in a folder of its own that user can reach.
"""

import dataclasses
import errno
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sweep_support import (
    REPO_ROOT,
    Incoming,
    add_images,
    all_predictions,
    all_runs,
    backdate,
    build_settings,
    check_csv_matches,
    files_under,
    image_bytes,
    local_sweep,
    service_env,
    sha256,
    sweep_csv,
)

import producer.scan
import refund_sorter.files
import refund_sorter.filing
from producer.scan import UNREADABLE_PREFIX
from producer.sweep import run_sweep

pytestmark = [pytest.mark.services, pytest.mark.model]


def after_listing(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Run ``change`` once, right after the scan listed incoming/ and before it reads a file."""
    real = producer.scan.list_files

    def list_then_change(incoming_dir):
        listing = real(incoming_dir)
        monkeypatch.setattr(producer.scan, "list_files", real)
        change()
        return listing

    monkeypatch.setattr(producer.scan, "list_files", list_then_change)


def logged(caplog: pytest.LogCaptureFixture, level: int) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == level)


# ------------------------------------------------------------------- files the user cannot read


def service_user() -> list[str]:
    """The command prefix that runs a process as an unprivileged user. As root (tests and
    CI) that is ``nobody``; any other user is already bound by file modes."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is needed to run the sweep as nobody", pytrace=False)
    nobody = pwd.getpwnam("nobody")
    return [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]


@pytest.fixture
def world_reachable_root() -> Iterator[Path]:
    """A folder outside pytest's private temporary folder, so ``nobody`` can reach it."""
    root = Path(tempfile.mkdtemp(prefix="refund-sorter-unprivileged-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        for folder in [root, *root.rglob("*")]:
            if folder.is_dir() and not folder.is_symlink():
                folder.chmod(0o755)
        shutil.rmtree(root)


def give_to_service_user(top: Path, but: list[Path]) -> None:
    """Make ``top`` the service user's, except the paths in ``but`` (they stay root's)."""
    if os.geteuid() != 0:
        return
    nobody = pwd.getpwnam("nobody")
    for path in [top, *top.rglob("*")]:
        owner = 0 if path in but else nobody.pw_uid
        os.chown(path, owner, 0 if path in but else nobody.pw_gid, follow_symlinks=False)


def sweep_as_service_user(settings, root: Path) -> subprocess.CompletedProcess:
    """``refund-sorter sweep --local`` as an operator's service account runs it."""
    env = {**service_env(settings), "HOME": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [*service_user(), sys.executable, "-c", "from cli import main; main()", "sweep", "--local"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_unreadable_photo_is_recorded_once_and_the_night_goes_on(
    fresh_pg_url, tiny_model, world_reachable_root
):
    root = world_reachable_root
    check = subprocess.run(
        [*service_user(), sys.executable, "-c", "import cli, producer.sweep, worker.local"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, (
        f"the unprivileged user cannot use {sys.executable} or {REPO_ROOT} (make the "
        f"virtual environment and the checkout world-readable):\n{check.stderr}"
    )
    shutil.copy(tiny_model.path, root / "model.pt")
    (root / "model.pt").chmod(0o644)  # saved atomically through a private temporary file
    model = dataclasses.replace(tiny_model, path=root / "model.pt")
    settings = build_settings(root / "home", fresh_pg_url, model)
    incoming = Incoming(settings.incoming_dir)
    images = add_images(incoming, 10, seed=91)
    # Two photos the service user cannot read: one where it could move it, one in a folder
    # it cannot write; and a text file in that folder, readable but impossible to move.
    locked = settings.incoming_dir / "locked"
    private, secret, notes = (
        settings.incoming_dir / "private.jpg",
        locked / "secret.jpg",
        locked / "notes.jpg",
    )
    rng = np.random.default_rng(92)
    locked.mkdir()
    private_bytes = image_bytes(rng, ".jpg")
    private.write_bytes(private_bytes)
    secret.write_bytes(image_bytes(rng, ".jpg"))
    notes.write_text("returns slip: 2 shirts\n")
    backdate(notes)  # damaged, not still being written
    give_to_service_user(root / "home", but=[locked, private, secret, notes])
    private.chmod(0o000)
    secret.chmod(0o000)
    locked.chmod(0o555)

    night = sweep_as_service_user(settings, root)

    assert night.returncode == 0, night.stdout + night.stderr
    assert (
        "status finished: 10 classified, 3 failed, 0 known, 0 left for later, 0 still queued"
    ) in night.stdout
    (run,) = all_runs(settings)
    assert (run.found, run.enqueued, run.succeeded, run.failed) == (13, 10, 10, 3)
    rows = all_predictions(settings)
    assert sorted(p.content_hash for p in rows if p.status == "ok") == sorted(images.values())
    failed = {p.original_path: p for p in rows if p.status == "failed"}
    assert set(failed) == {str(private), str(secret), str(notes)}
    for path in (private, secret):
        row = failed[str(path)]
        assert row.content_hash.startswith(UNREADABLE_PREFIX)
        assert "cannot read file: permission denied" in row.error
        assert row.final_path is None
        assert str(path) in night.stderr  # the operator is told, once
    assert failed[str(notes)].content_hash == sha256(notes.read_bytes())
    assert "not an image" in failed[str(notes)].error
    assert "left where it is: could not move it" in failed[str(notes)].error
    assert failed[str(notes)].final_path is None
    # Every file is where its row says: the photos in processed/, the rest untouched.
    assert set(files_under(settings.processed_dir)) == set(images)
    assert all(p.exists() for p in (private, secret, notes))
    assert files_under(settings.failed_dir) == {}
    check_csv_matches(sweep_csv(settings, run), rows)

    # The next night: new photos, the operator has made one of the two readable.
    more = add_images(incoming, 3, seed=93)
    give_to_service_user(root / "home", but=[locked, private, secret, notes])
    private.chmod(0o644)

    night = sweep_as_service_user(settings, root)

    assert night.returncode == 0, night.stdout + night.stderr
    assert (
        "status finished: 4 classified, 0 failed, 2 known, 0 left for later, 0 still queued"
    ) in night.stdout
    run = all_runs(settings)[-1]
    assert (run.found, run.enqueued, run.known, run.failed) == (6, 4, 2, 0)
    rows = all_predictions(settings)
    assert sum(p.status == "failed" for p in rows) == 3  # no new row for what is still stuck
    ok = {p.content_hash: p for p in rows if p.status == "ok"}
    assert set(ok) == {*images.values(), *more.values(), sha256(private_bytes)}
    assert Path(ok[sha256(private_bytes)].final_path) == settings.processed_dir / "private.jpg"
    for quiet in ("secret.jpg", "notes.jpg", "could not move", "cannot read"):
        assert quiet not in night.stderr, night.stderr
    assert secret.exists() and notes.exists()


# ------------------------------------------------ files that change while the sweep looks


def test_a_file_that_vanishes_between_listing_and_hashing_is_left_alone_and_logged(
    fresh_pg_url, make_settings, classifier, monkeypatch, caplog
):
    settings = make_settings(fresh_pg_url)
    incoming = Incoming(settings.incoming_dir)
    images = add_images(incoming, 6, seed=71)
    gone, gone_hash = next(iter(images.items()))
    after_listing(monkeypatch, (settings.incoming_dir / gone).unlink)
    caplog.set_level(logging.INFO, logger="producer")

    run = local_sweep(settings, classifier)

    assert (run.status, run.found, run.enqueued, run.succeeded, run.failed) == (
        "finished",
        5,
        5,
        5,
        0,
    )
    assert gone_hash not in {p.content_hash for p in all_predictions(settings)}
    assert len(all_predictions(settings)) == 5
    assert "vanished after it was listed: 1" in logged(caplog, logging.INFO)
    assert str(settings.incoming_dir / gone) in logged(caplog, logging.INFO)
    assert files_under(settings.incoming_dir) == {}


def test_a_folder_where_a_file_was_expected_is_neither_read_nor_moved(
    fresh_pg_url, make_settings, classifier, monkeypatch, caplog, tmp_path
):
    settings = make_settings(fresh_pg_url)
    incoming = Incoming(settings.incoming_dir)
    images = add_images(incoming, 4, seed=72)
    slip = settings.incoming_dir / "slip.jpg"
    slip.write_text("returns slip\n")
    backdate(slip)
    photo_rel, photo_hash = next(iter(images.items()))
    photo = settings.incoming_dir / photo_rel
    inner = Incoming(tmp_path / "inner")
    inner_hashes = set(add_images(inner, 2, seed=73).values())

    def photo_becomes_a_folder():
        photo.unlink()
        inner.root.rename(photo)  # a folder of two photos the scan has not listed

    after_listing(monkeypatch, photo_becomes_a_folder)
    # And the text file turns into a folder after its failed row is committed, before the
    # move that would have carried whatever the folder holds to failed/.
    real_move_files = refund_sorter.filing.move_files

    def slip_becomes_a_folder(moves):
        if any(src == slip for src, _ in moves):
            slip.unlink()
            (slip / "note.txt").parent.mkdir()
            (slip / "note.txt").write_text("not yet read\n")
            backdate(slip / "note.txt")
        return real_move_files(moves)

    monkeypatch.setattr(refund_sorter.filing, "move_files", slip_becomes_a_folder)
    caplog.set_level(logging.INFO)

    run = local_sweep(settings, classifier)

    assert (run.status, run.found, run.succeeded, run.failed) == ("finished", 4, 3, 1)
    rows = all_predictions(settings)
    assert photo_hash not in {p.content_hash for p in rows}
    assert not inner_hashes & {p.content_hash for p in rows}
    assert f"became a folder after it was listed: 1 ({photo})" in logged(caplog, logging.INFO)
    (slip_row,) = [p for p in rows if p.status == "failed"]
    assert slip_row.original_path == str(slip) and slip_row.final_path is None
    assert "no longer a regular file" in slip_row.error
    assert (slip / "note.txt").read_text() == "not yet read\n"
    assert not settings.failed_dir.exists()

    # The next night reads the folder's photos like any others, and only those.
    monkeypatch.setattr(refund_sorter.filing, "move_files", real_move_files)
    second = local_sweep(settings, classifier)
    assert (second.found, second.succeeded, second.failed) == (3, 2, 1)
    assert {p.content_hash for p in all_predictions(settings) if p.sweep_run_id == second.id} == {
        *inner_hashes,
        sha256(b"not yet read\n"),
    }
    assert set(files_under(settings.processed_dir / photo_rel)) == set(inner.images)


def test_links_pipes_and_swapped_in_links_are_never_followed_or_read(
    fresh_pg_url, make_settings, classifier, monkeypatch, caplog, tmp_path
):
    settings = make_settings(fresh_pg_url)
    incoming = Incoming(settings.incoming_dir)
    images = add_images(incoming, 4, seed=74)
    outside = Incoming(tmp_path / "outside")
    outside_hashes = set(add_images(outside, 3, seed=75).values())
    first_outside = outside.root / next(iter(outside.images))
    (settings.incoming_dir / "link.jpg").symlink_to(first_outside)
    (settings.incoming_dir / "linked-folder").symlink_to(outside.root, target_is_directory=True)
    os.mkfifo(settings.incoming_dir / "pipe.jpg")
    swapped_rel, swapped_hash = next(iter(images.items()))
    swapped = settings.incoming_dir / swapped_rel
    fifo_rel, fifo_hash = list(images.items())[1]
    fifo = settings.incoming_dir / fifo_rel

    def swap():
        swapped.unlink()
        swapped.symlink_to(first_outside)
        fifo.unlink()
        os.mkfifo(fifo)  # opening it for reading the usual way would wait for ever

    after_listing(monkeypatch, swap)
    caplog.set_level(logging.INFO)

    run = local_sweep(settings, classifier)

    assert (run.status, run.found, run.succeeded, run.failed) == ("finished", 2, 2, 0)
    hashes = {p.content_hash for p in all_predictions(settings)}
    assert hashes == set(images.values()) - {swapped_hash, fifo_hash}
    assert not outside_hashes & hashes
    warned = logged(caplog, logging.WARNING)
    assert "a symbolic link (never followed): 2" in warned
    assert "a pipe, socket or device (not a regular file): 1" in warned
    informed = logged(caplog, logging.INFO)
    assert "became a symbolic link (never followed) after it was listed: 1" in informed
    assert "became a pipe, socket or device (not a regular file) after it" in informed
    # Links and pipes stay as they were; what they point to is untouched.
    for name in ("link.jpg", "linked-folder", swapped_rel):
        assert (settings.incoming_dir / name).is_symlink()
    assert files_under(outside.root) == outside.images


def test_an_io_error_while_reading_gives_one_failed_row_and_the_file_stays(
    fresh_pg_url, make_settings, classifier, monkeypatch
):
    settings = make_settings(fresh_pg_url)
    incoming = Incoming(settings.incoming_dir)
    images = add_images(incoming, 3, seed=76)
    bad_rel, bad_hash = next(iter(images.items()))
    bad = settings.incoming_dir / bad_rel
    real_hash = producer.scan.sha256_file

    def failing_disk(fh, *args):  # the disk cannot deliver this one file's bytes
        if os.path.samestat(os.fstat(fh.fileno()), os.stat(bad)):
            raise OSError(errno.EIO, "Input/output error")
        return real_hash(fh, *args)

    monkeypatch.setattr(producer.scan, "sha256_file", failing_disk)

    first = local_sweep(settings, classifier)
    second = local_sweep(settings, classifier)

    assert (first.found, first.succeeded, first.failed) == (3, 2, 1)
    assert (second.status, second.found, second.known, second.failed) == ("finished", 1, 1, 0)
    (row,) = [p for p in all_predictions(settings) if p.status == "failed"]
    assert row.sweep_run_id == first.id and row.final_path is None
    assert "cannot read file: input/output error" in row.error
    assert bad.exists()

    # Once the file can be read again, it is classified like any other.
    monkeypatch.setattr(producer.scan, "sha256_file", real_hash)
    third = local_sweep(settings, classifier)
    assert (third.found, third.succeeded) == (1, 1)
    assert bad_hash in {p.content_hash for p in all_predictions(settings) if p.status == "ok"}


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
        backdate(path)
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
    assert (done.found, done.failed, done.known, done.pending) == (n, n, 0, 0)
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
