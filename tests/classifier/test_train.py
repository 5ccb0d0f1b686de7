"""classifier/train.py: a short training run learns what it is shown."""

import re
from pathlib import Path

import pytest

from classifier.checkpoint import load_checkpoint, model_version
from classifier.recipe import TrainConfig
from classifier.taxonomy import read_layout
from classifier.train import split_validation, train
from refund_sorter.errors import UserError


@pytest.mark.slow
def test_training_beats_chance_on_held_out_images(trained_model):
    summary, _, _ = trained_model

    # 4 sub categories (chance 0.25) in 2 main categories (chance 0.5)
    assert summary.metrics["sub_accuracy"] > 0.6
    assert summary.metrics["main_accuracy"] > 0.8
    assert summary.n_train == 96
    assert summary.n_val == 32, "tops/vest is not in the training data and is not scored"
    assert summary.skipped == []
    assert 1 <= summary.best_epoch <= 2


@pytest.mark.slow
def test_training_saves_the_best_epoch_with_everything_inference_needs(trained_model):
    summary, held_out, _ = trained_model
    train_dir = held_out.parent / "train"

    checkpoint = load_checkpoint(summary.model_path)

    assert summary.version == checkpoint.version == model_version(summary.model_path)
    assert checkpoint.taxonomy == read_layout(train_dir).taxonomy
    assert checkpoint.image_size == 32
    assert checkpoint.arch == "resnet18"
    meta = checkpoint.meta
    assert meta["best_epoch"] == summary.best_epoch
    assert meta["metrics"]["sub_accuracy"] == pytest.approx(summary.metrics["sub_accuracy"])
    assert (meta["n_train"], meta["n_val"]) == (96, 32)
    assert meta["pretrained"] == "none"
    assert meta["dataset"] == str(train_dir.resolve())
    assert meta["validation"] == str(held_out)
    assert meta["args"]["epochs"] == 2


@pytest.mark.slow
def test_training_tells_what_it_does(trained_model):
    summary, _, lines = trained_model

    assert any(
        line.startswith("taxonomy: 2 main, 4 sub categories; 96 training and 32 validation")
        for line in lines
    )
    note = "note: validation folder tops/vest is not in the training data: 3 image(s) not used"
    assert note in lines
    assert summary.notes == [note.removeprefix("note: ")]
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2
    assert sum("(best, saved)" in line for line in epochs) >= 1


# --- the validation split -----------------------------------------------------------------------


def test_split_is_stratified_disjoint_and_repeatable():
    files = [(Path(f"a{i}.jpg"), 0) for i in range(20)]
    files += [(Path(f"b{i}.jpg"), 1) for i in range(10)]
    files += [(Path("c0.jpg"), 2)]  # a category with one image cannot spare it

    train_files, val_files = split_validation(files, 0.2, seed=5)

    assert sorted(train_files + val_files) == sorted(files)
    assert not set(train_files) & set(val_files)
    per_label = {label: sum(1 for _, lab in val_files if lab == label) for label in (0, 1, 2)}
    assert per_label == {0: 4, 1: 2, 2: 0}
    assert split_validation(files, 0.2, seed=5) == (train_files, val_files)
    assert split_validation(files, 0.2, seed=6) != (train_files, val_files)


def test_a_tiny_fraction_still_validates_on_every_category():
    files = [(Path(f"{label}{i}.jpg"), label) for label in range(3) for i in range(5)]

    _, val_files = split_validation(files, 0.01, seed=0)

    assert sorted(label for _, label in val_files) == [0, 1, 2]


# --- failing early, with a message --------------------------------------------------------------


def test_only_unreadable_images_is_a_user_error(tmp_path, make_broken_files):
    make_broken_files(tmp_path / "data" / "tops" / "shirt")
    make_broken_files(tmp_path / "data" / "bottoms" / "jeans")
    lines: list[str] = []

    with pytest.raises(UserError, match="no readable training images"):
        train(tmp_path / "data", tmp_path / "m.pt", TrainConfig(device="cpu"), echo=lines.append)

    assert sum(line.startswith("skipped ") for line in lines) == 8
    assert not (tmp_path / "m.pt").exists()


def test_unreadable_validation_images_are_a_user_error(tmp_path, make_dataset, make_broken_files):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 3, "bottoms/jeans": 3})
    make_broken_files(tmp_path / "val" / "tops" / "shirt")
    cfg = TrainConfig(device="cpu", val_dir=tmp_path / "val")

    with pytest.raises(UserError, match="no readable validation images"):
        train(data, tmp_path / "m.pt", cfg, echo=lambda _: None)


def test_a_missing_validation_folder_is_a_user_error(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 2, "bottoms/jeans": 2})
    cfg = TrainConfig(device="cpu", val_dir=tmp_path / "no_such_val")

    with pytest.raises(UserError, match=re.escape(f"data folder not found: {cfg.val_dir}")):
        train(data, tmp_path / "m.pt", cfg, echo=lambda _: None)
