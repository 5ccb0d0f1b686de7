"""refund_sorter/taxonomy.py: the category tree read from a data folder's layout."""

import json
import re

import pytest

from refund_sorter.errors import UserError
from refund_sorter.taxonomy import Taxonomy, read_layout


def touch(path, content: bytes = b"x"):
    """read_layout only lists files; it never decodes them, so any bytes will do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# --- nested layout: <main>/<sub>/<image> -----------------------------------------------------


@pytest.fixture
def nested_root(tmp_path):
    root = tmp_path / "data"
    touch(root / "tops" / "sweater" / "a.jpg")
    touch(root / "tops" / "sweater" / "b.jpg")
    touch(root / "tops" / "shirt" / "a.jpg")
    touch(root / "tops" / "shirt" / "nested" / "deeper.jpg")  # subfolders of a sub count
    touch(root / "tops" / "shirt" / ".DS_Store")
    touch(root / "tops" / "shirt" / ".thumbnails" / "a.jpg")  # hidden folder inside a sub
    touch(root / "bottoms" / "skirt" / "a.png")
    touch(root / "bottoms" / "jeans" / "a.png")
    touch(root / "bottoms" / "jeans" / "._a.png")  # macOS resource fork
    (root / "bottoms" / "shorts").mkdir()  # empty
    touch(root / "tops" / "vest" / ".hidden.jpg")  # only a hidden file: empty too
    touch(root / ".trash" / "old" / "x.jpg")  # hidden main folder
    touch(root / "tops" / ".cache" / "y.jpg")  # hidden sub folder
    (root / "shoes").mkdir()  # a main category with no sub folders at all
    touch(root / "README.txt")  # stray at main level
    touch(root / "tops" / "notes.txt")  # stray at sub level
    return root


def test_nested_layout_sorts_mains_and_groups_subs_under_them(nested_root):
    layout = read_layout(nested_root)

    tax = layout.taxonomy
    assert tax.main == ("bottoms", "tops")
    assert tax.sub == ("jeans", "skirt", "shirt", "sweater")
    assert [tax.main[m] for m in tax.sub_to_main] == ["bottoms", "bottoms", "tops", "tops"]


def test_nested_layout_labels_every_visible_file_with_its_sub(nested_root):
    layout = read_layout(nested_root)

    tax = layout.taxonomy
    labelled = {
        str(path.relative_to(nested_root)): f"{tax.main[tax.sub_to_main[i]]}/{tax.sub[i]}"
        for path, i in layout.files
    }
    assert labelled == {
        "bottoms/jeans/a.png": "bottoms/jeans",
        "bottoms/skirt/a.png": "bottoms/skirt",
        "tops/shirt/a.jpg": "tops/shirt",
        "tops/shirt/nested/deeper.jpg": "tops/shirt",
        "tops/sweater/a.jpg": "tops/sweater",
        "tops/sweater/b.jpg": "tops/sweater",
    }


def test_nested_layout_reports_empty_folders_and_stray_files(nested_root):
    layout = read_layout(nested_root)

    assert layout.empty_folders == [
        nested_root / "bottoms" / "shorts",
        nested_root / "shoes",
        nested_root / "tops" / "vest",
    ]
    assert "shoes" not in layout.taxonomy.main
    assert "shorts" not in layout.taxonomy.sub
    assert "vest" not in layout.taxonomy.sub
    assert sorted(layout.stray_files) == [
        nested_root / "README.txt",
        nested_root / "tops" / "notes.txt",
    ]


def test_same_sub_name_under_two_mains_stays_two_categories(tmp_path):
    touch(tmp_path / "tops" / "other" / "a.jpg")
    touch(tmp_path / "bottoms" / "other" / "a.jpg")

    tax = read_layout(tmp_path).taxonomy

    assert tax.sub == ("other", "other")
    assert tax.index_of("bottoms", "other") == 0
    assert tax.index_of("tops", "other") == 1


def test_a_single_class_is_refused_with_a_clear_message(tmp_path):
    touch(tmp_path / "tops" / "shirt" / "a.jpg")
    (tmp_path / "tops" / "sweater").mkdir()

    with pytest.raises(UserError) as info:
        read_layout(tmp_path)

    message = str(info.value)
    assert "at least 2 sub category" in message
    assert "found: tops/shirt" in message
    assert "<main>/<sub>/<image>" in message


def test_an_empty_folder_is_refused_and_says_none_found(tmp_path):
    with pytest.raises(UserError, match="found: none"):
        read_layout(tmp_path)


def test_a_single_class_is_fine_when_evaluating(tmp_path):
    touch(tmp_path / "tops" / "shirt" / "a.jpg")

    layout = read_layout(tmp_path, min_subs=1)

    assert layout.taxonomy == Taxonomy(("tops",), ("shirt",), (0,))


def test_a_missing_folder_is_a_user_error(tmp_path):
    missing = tmp_path / "nowhere"

    with pytest.raises(UserError, match=re.escape(f"data folder not found: {missing}")):
        read_layout(missing)


def test_a_file_instead_of_a_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="data folder not found"):
        read_layout(touch(tmp_path / "data.zip"))


# --- flat layout: <index>_<sub>/ with a JSON mapping ---------------------------------------


@pytest.fixture
def flat_root(tmp_path):
    root = tmp_path / "flat"
    touch(root / "0_shirt" / "a.jpg")
    touch(root / "1_jeans" / "a.jpg")
    touch(root / "1_jeans" / "b.jpg")
    touch(root / "12_sweater" / "a.jpg")
    (root / "3_skirt").mkdir()
    touch(root / "misc" / "a.jpg")  # no index: not a class folder
    return root


def write_mapping(path, mapping):
    path.write_text(json.dumps(mapping))
    return path


def test_flat_layout_reads_mains_from_the_mapping(flat_root, tmp_path):
    mapping = write_mapping(
        tmp_path / "map.json",
        {"shirt": "tops", "sweater": "tops", "jeans": "bottoms", "skirt": "bottoms"},
    )

    layout = read_layout(flat_root, mapping)

    tax = layout.taxonomy
    assert tax.main == ("bottoms", "tops")
    assert tax.sub == ("jeans", "shirt", "sweater")
    assert tax.sub_to_main == (0, 1, 1)
    labels = sorted((p.relative_to(flat_root).as_posix(), tax.sub[i]) for p, i in layout.files)
    assert labels == [
        ("0_shirt/a.jpg", "shirt"),
        ("12_sweater/a.jpg", "sweater"),
        ("1_jeans/a.jpg", "jeans"),
        ("1_jeans/b.jpg", "jeans"),
    ]
    assert layout.empty_folders == [flat_root / "3_skirt"]
    assert layout.stray_files == [flat_root / "misc"]


def test_flat_folder_missing_from_the_mapping_is_named(flat_root, tmp_path):
    mapping = write_mapping(tmp_path / "map.json", {"shirt": "tops", "jeans": "bottoms"})

    with pytest.raises(UserError) as info:
        read_layout(flat_root, mapping)

    message = str(info.value)
    assert "does not say which main category" in message
    assert "12_sweater" in message
    assert "3_skirt" in message
    assert "0_shirt" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "cannot read mapping file"),
        ('["shirt", "tops"]', "must be a JSON object"),
        ('{"shirt": ["tops"]}', "must be a JSON object"),
    ],
)
def test_a_bad_mapping_file_is_a_user_error(flat_root, tmp_path, content, expected):
    mapping = tmp_path / "map.json"
    mapping.write_text(content)

    with pytest.raises(UserError, match=expected):
        read_layout(flat_root, mapping)


def test_a_missing_mapping_file_is_a_user_error(flat_root, tmp_path):
    missing = tmp_path / "absent.json"

    with pytest.raises(UserError, match=re.escape(f"cannot read mapping file {missing}")):
        read_layout(flat_root, missing)


# --- Taxonomy itself -------------------------------------------------------------------------


def test_taxonomy_round_trips_through_json():
    tax = Taxonomy(("bottoms", "tops"), ("jeans", "skirt", "shirt"), (0, 0, 1))

    again = Taxonomy.from_dict(json.loads(json.dumps(tax.to_dict())))

    assert again == tax
    assert isinstance(again.sub_to_main, tuple)


def test_index_of_finds_a_sub_only_under_its_own_main():
    tax = Taxonomy(("bottoms", "tops"), ("jeans", "skirt", "shirt"), (0, 0, 1))

    assert tax.index_of("bottoms", "skirt") == 1
    assert tax.index_of("tops", "shirt") == 2
    assert tax.index_of("tops", "skirt") is None
    assert tax.index_of("shoes", "boots") is None


@pytest.mark.parametrize(
    ("sub", "sub_to_main"),
    [(("a", "b"), (0,)), (("a",), (2,)), (("a",), (-1,))],
)
def test_an_inconsistent_taxonomy_cannot_be_built(sub, sub_to_main):
    with pytest.raises(ValueError):
        Taxonomy(("m0", "m1"), sub, sub_to_main)


def test_several_folders_are_read_as_one_and_counted_each(tmp_path):
    base, extra = tmp_path / "base", tmp_path / "extra"
    touch(base / "tops" / "shirt" / "a.jpg")
    touch(base / "bottoms" / "jeans" / "b.jpg")
    touch(extra / "tops" / "shirt" / "c.jpg")
    touch(extra / "tops" / "shirt" / "d.jpg")
    touch(extra / "tops" / "vest" / "e.jpg")

    layout = read_layout([base, extra])

    assert layout.taxonomy == Taxonomy(("bottoms", "tops"), ("jeans", "shirt", "vest"), (0, 1, 1))
    by_name = {path.name: layout.taxonomy.sub[i] for path, i in layout.files}
    assert by_name == {
        "a.jpg": "shirt",
        "b.jpg": "jeans",
        "c.jpg": "shirt",
        "d.jpg": "shirt",
        "e.jpg": "vest",
    }
    assert layout.folders == [(base.resolve(), 2), (extra.resolve(), 3)]


def test_a_folder_given_twice_or_missing_among_several_is_a_user_error(tmp_path):
    touch(tmp_path / "base" / "tops" / "shirt" / "a.jpg")
    touch(tmp_path / "base" / "bottoms" / "jeans" / "b.jpg")

    with pytest.raises(UserError, match="data folder given twice"):
        read_layout([tmp_path / "base", tmp_path / "base"])
    with pytest.raises(UserError, match=r"data folder not found: .*missing"):
        read_layout([tmp_path / "base", tmp_path / "missing"])
