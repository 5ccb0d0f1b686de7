"""refund_sorter/atomic.py: a file is written whole or not at all."""

import os

import pytest

from refund_sorter.atomic import atomic_write


def test_the_file_appears_whole_and_no_temporary_file_is_left(tmp_path):
    path = tmp_path / "night.csv"
    path.write_text("old\n")
    with atomic_write(path, newline="", encoding="utf-8") as fh:
        fh.write("new\n")
        assert path.read_text() == "old\n"  # the reader still sees the old file
        assert os.path.dirname(fh.name) == str(tmp_path)  # beside it: one rename, no copy
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["night.csv"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(path, "wb", fsync=True) as fh:
        fh.write(b"half")
        raise RuntimeError("the disk is full")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_the_temporary_file_is_hidden_and_takes_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "fold-1.cv.json") as fh:
            assert os.path.basename(fh.name).startswith(".")  # training and folder walks skip it
    finally:
        os.umask(previous)
    assert (tmp_path / "fold-1.cv.json").stat().st_mode & 0o777 == 0o644


def test_only_whole_file_modes(tmp_path):
    with pytest.raises(ValueError, match="whole file"), atomic_write(tmp_path / "x", "a"):
        pass
