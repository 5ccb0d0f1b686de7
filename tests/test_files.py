"""Where a file is filed: the same relative path under processed/ or failed/, computed on
resolved paths, so no destination leaves its folder or holds ".."."""

from pathlib import Path

import pytest

from refund_sorter.files import destination, inside, move_files

HASH = "ab" * 32


@pytest.fixture
def folders(tmp_path):
    incoming, processed = tmp_path / "incoming", tmp_path / "processed"
    (incoming / "dock-3").mkdir(parents=True)
    processed.mkdir()
    (tmp_path / "elsewhere").mkdir()
    return tmp_path, incoming, processed


def test_a_file_keeps_its_relative_path(folders):
    _, incoming, processed = folders
    path = incoming / "dock-3" / "a.jpg"
    assert destination(path, incoming, processed, HASH) == processed.resolve() / "dock-3/a.jpg"
    path.parent.joinpath("x").mkdir()
    dotted = incoming / "dock-3" / "x" / ".." / "a.jpg"
    assert destination(dotted, incoming, processed, HASH) == processed.resolve() / "dock-3/a.jpg"


@pytest.mark.parametrize(
    "relative",
    ["../elsewhere/a.jpg", "dock-3/../../elsewhere/a.jpg", "../../../../etc/passwd"],
)
def test_no_destination_leaves_its_folder_or_holds_dot_dot(folders, relative):
    _, incoming, processed = folders
    dest = destination(Path(f"{incoming}/{relative}"), incoming, processed, HASH)
    assert dest.is_relative_to(processed.resolve()) and ".." not in dest.parts
    assert inside(f"{incoming}/{relative}", incoming) is None


def test_inside_follows_symlinks(folders):
    root, incoming, _ = folders
    (root / "elsewhere" / "a.jpg").write_bytes(b"x")
    (incoming / "out.jpg").symlink_to(root / "elsewhere" / "a.jpg")
    (incoming / "in.jpg").symlink_to(incoming / "dock-3" / "b.jpg")
    assert inside(incoming / "out.jpg", incoming) is None
    assert inside(incoming / "in.jpg", incoming) == (incoming / "dock-3" / "b.jpg").resolve()
    assert inside(incoming, incoming) is None
    assert inside(f"{incoming}/a\x00.jpg", incoming) is None


def test_a_move_that_fails_says_why_and_the_others_go_on(folders):
    _, incoming, processed = folders
    first, second, third = (incoming / "dock-3" / f"{n}.jpg" for n in "abc")
    for path in (first, second, third):
        path.write_bytes(path.name.encode())
    (processed / "blocked").write_text("a file, where a folder should be\n")

    outcomes = move_files(
        [
            (first, processed / "dock-3" / "a.jpg"),
            (second, processed / "blocked" / "b.jpg"),
            (third, processed / "c.jpg"),
        ]
    )

    assert outcomes == [
        None,
        f"could not move it to {processed / 'blocked' / 'b.jpg'}: not a directory",
        None,
    ]
    assert (processed / "dock-3" / "a.jpg").read_bytes() == b"a.jpg"
    assert second.read_bytes() == b"b.jpg"  # still where it was
    assert (processed / "c.jpg").read_bytes() == b"c.jpg"
    assert not first.exists() and not third.exists()
