"""Where a file is filed: the same relative path under processed/ or failed/, computed on
resolved paths, so no destination leaves its folder or holds ".."."""

from pathlib import Path

import pytest

from refund_sorter.config import Settings
from refund_sorter.files import Folders, destination, inside, move_files

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


def folders_of(root: Path, incoming: Path, **overrides) -> Folders:
    return Folders.of(Settings(home=root, incoming_dir=incoming, **overrides))


def test_a_batch_s_folders_check_and_place_each_path_as_one_by_one(folders):
    # Resolved once, the folders must answer as resolving both sides for every path does:
    # forged paths, links out and in, the folder itself, and a path reached through a link.
    root, incoming, processed = folders
    (root / "elsewhere" / "a.jpg").write_bytes(b"x")
    (incoming / "out.jpg").symlink_to(root / "elsewhere" / "a.jpg")
    (incoming / "in.jpg").symlink_to(incoming / "dock-3" / "b.jpg")
    (incoming / "dock-3" / "b.jpg").write_bytes(b"b")
    (processed / "dock-3").mkdir()
    (processed / "dock-3" / "b.jpg").write_bytes(b"taken")
    (root / "share").symlink_to(incoming, target_is_directory=True)
    paths = [
        incoming / "dock-3" / "a.jpg",
        incoming / "dock-3" / "b.jpg",  # its name taken in processed/
        incoming / "dock-3" / ".." / "dock-3" / "a.jpg",
        f"{incoming}/../elsewhere/a.jpg",
        f"{incoming}/../../../../etc/passwd",
        incoming / "out.jpg",
        incoming / "in.jpg",
        incoming,
        f"{incoming}/a\x00.jpg",
        root / "share" / "dock-3" / "a.jpg",
    ]
    for given in (incoming, root / "share"):
        batch = folders_of(root, given)
        for path in paths:
            assert batch.inside_incoming(path) == inside(path, given), path
            if (src := inside(path, given)) is not None:
                assert batch.processed_destination(src, HASH, "tops", "shirt") == destination(
                    src, given, processed, HASH
                )
                assert batch.failed_destination(src, HASH) == destination(
                    src, given, root / "failed", HASH
                )


def test_a_batch_s_folders_file_by_category_as_one_by_one(folders):
    root, incoming, processed = folders
    (processed / "tops" / "shirt").mkdir(parents=True)
    (processed / "tops" / "shirt" / "b.jpg").write_bytes(b"taken")
    batch = folders_of(root, incoming, file_by_category=True)
    for name in ("a.jpg", "b.jpg"):
        src = (incoming / "dock-3" / name).resolve()
        expected = destination(src, src.parent, processed / "tops" / "shirt", HASH)
        assert batch.processed_destination(src, HASH, "tops", "shirt") == expected
    assert expected.name == f"b-{HASH[:8]}.jpg"


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
