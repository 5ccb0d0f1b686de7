"""cli/model.py: the model commands (train, evaluate, classify), as an operator runs them.

Bad input must give a plain ``error:`` line and exit code 1, never a traceback; files that
cannot be read are named and skipped, not fatal.
"""

import json
import os
import re
import shlex
from urllib.error import URLError

import pytest
import torch
from click.testing import CliRunner, Result
from model_support import SCRATCH_OPTIONS, save_scaled_model

from classifier.checkpoint import load_checkpoint
from cli import main
from training.recipe import TrainConfig

FAST = [
    "--epochs",
    "1",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    *SCRATCH_OPTIONS,
]


def run(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_failure(result: Result) -> None:
    """Exit code 1 through the CLI's own error handling, not an escaped exception."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "error: " in result.output
    assert "Traceback" not in result.output


# --- train --------------------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.slow
def test_train_skips_unreadable_files_names_them_and_counts_them(
    tmp_path, make_dataset, make_broken_files
):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 6, "bottoms/jeans": 6})
    broken = make_broken_files(data / "tops" / "shirt")
    out = tmp_path / "model.pt"

    result = run("train", data, "--out", out, "--val-fraction", "0.3", *FAST)

    assert result.exit_code == 0, result.output
    for path in broken.values():
        assert f"skipped {path}: " in result.output
    assert "4 unreadable skipped" in result.output
    assert f"saved {out} (version {load_checkpoint(out).version}, epoch 1)" in result.output
    assert "validation accuracy: main " in result.output


@pytest.mark.model
@pytest.mark.slow
def test_train_notes_empty_folders_and_stray_files(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 4, "bottoms/jeans": 4})
    (data / "tops" / "sweater").mkdir()
    (data / "tops" / "list.csv").write_text("a,b\n")
    out = tmp_path / "model.pt"

    result = run("train", data, "--out", out, "--val-fraction", "0.3", *FAST)

    assert result.exit_code == 0, result.output
    assert f"note: empty folder left out: {data / 'tops' / 'sweater'}" in result.output
    assert f"note: file outside <main>/<sub>/ ignored: {data / 'tops' / 'list.csv'}" in (
        result.output
    )
    assert "0 unreadable skipped" in result.output
    assert "sweater" not in load_checkpoint(out).taxonomy.sub


@pytest.mark.model
@pytest.mark.slow
def test_train_reads_several_data_folders_as_one_and_records_each(tmp_path, make_dataset):
    """The base set plus a folder of reviewed photos, as export-training-set writes it: a
    category in both is one category, and one only in the second is learned too."""
    base = make_dataset(tmp_path / "base", {"tops/shirt": 6, "bottoms/jeans": 6})
    reviewed = make_dataset(tmp_path / "reviewed", {"tops/shirt": 2, "tops/vest": 6}, seed=5)
    out = tmp_path / "model.pt"

    result = run("train", base, reviewed, "--out", out, "--val-fraction", "0.3", *FAST)

    assert result.exit_code == 0, result.output
    assert f"data folder {base.resolve()}: 12 photos" in result.output
    assert f"data folder {reviewed.resolve()}: 8 photos" in result.output
    checkpoint = load_checkpoint(out)
    assert checkpoint.taxonomy.sub == ("jeans", "shirt", "vest")
    assert checkpoint.meta["datasets"] == [
        {"path": str(base.resolve()), "photos": 12},
        {"path": str(reviewed.resolve()), "photos": 8},
    ]
    assert len(checkpoint.meta["content_hashes"]) == 20


@pytest.mark.model
def test_train_on_the_same_folder_twice_fails_with_an_error_line(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 4, "bottoms/jeans": 4})

    result = run("train", data, data, "--out", tmp_path / "m.pt", *FAST)

    assert_clean_failure(result)
    assert f"data folder given twice: {data}" in result.output


def test_train_on_a_single_class_fails_with_an_error_line(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 3})
    out = tmp_path / "model.pt"

    result = run("train", data, "--out", out, *FAST)

    assert_clean_failure(result)
    assert "at least 2 sub category folder(s)" in result.output
    assert "found: tops/shirt" in result.output
    assert not out.exists()


def test_train_on_a_missing_folder_fails_with_an_error_line(tmp_path):
    result = run("train", tmp_path / "no_such_data", "--out", tmp_path / "m.pt", *FAST)

    assert_clean_failure(result)
    assert f"error: data folder not found: {tmp_path / 'no_such_data'}" in result.output


@pytest.mark.model
def test_train_with_imagenet_weights_offline_fails_with_advice(tmp_path, make_dataset, monkeypatch):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 3, "bottoms/jeans": 3})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(*args, **kwargs):
        raise URLError("no internet here")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)

    result = run("train", data, "--out", tmp_path / "m.pt", *FAST, "--pretrained", "imagenet")

    assert_clean_failure(result)
    assert "could not be downloaded" in result.output
    assert "--pretrained none" in result.output


# --- classify -----------------------------------------------------------------------------------


@pytest.fixture
def photo_and_junk(tmp_path, make_image):
    good = make_image(tmp_path / "good.jpg", colour=(40, 70, 210))
    junk = tmp_path / "junk.jpg"
    junk.write_text("not a photo")
    return good, junk


@pytest.mark.model
def test_classify_prints_a_row_per_file_and_fails_when_one_is_broken(
    random_checkpoint, photo_and_junk
):
    good, junk = photo_and_junk

    result = run("classify", random_checkpoint, junk, good, "--device", "cpu")

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    rows = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(rows) == 2
    assert rows[0].startswith(str(junk)) and "failed: not an image" in rows[0]
    assert rows[1].startswith(str(good))
    tax = load_checkpoint(random_checkpoint).taxonomy
    _, main, main_conf, sub, sub_conf, *review = rows[1].split()
    assert tax.index_of(main, sub) is not None
    assert 0 < float(sub_conf) <= float(main_conf) <= 1
    assert review == (["review"] if float(sub_conf) < 0.6 else [])


@pytest.mark.model
def test_classify_json_lists_failures_with_their_error(random_checkpoint, photo_and_junk):
    good, junk = photo_and_junk

    result = run("classify", random_checkpoint, good, junk, "--json", "--device", "cpu")

    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["model_version"] == load_checkpoint(random_checkpoint).version
    ok, failed = report["predictions"]
    assert ok["file"] == str(good) and ok["status"] == "ok"
    tax = load_checkpoint(random_checkpoint).taxonomy
    assert tax.index_of(ok["main"], ok["sub"]) is not None
    assert 0 < ok["sub_confidence"] <= ok["main_confidence"] <= 1
    assert failed == {"file": str(junk), "status": "failed", "error": failed["error"]}
    assert "not an image" in failed["error"]


@pytest.mark.model
def test_classify_good_images_exits_zero(random_checkpoint, tmp_path, make_image):
    images = [make_image(tmp_path / f"{i}.png", colour=(i * 60, 90, 30)) for i in range(3)]

    result = run("classify", random_checkpoint, *images, "--json", "--device", "cpu")

    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)["predictions"]
    assert [p["file"] for p in predictions] == [str(p) for p in images]
    assert all(p["status"] == "ok" for p in predictions)


@pytest.mark.model
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_classify_runs_in_the_precision_asked_for(
    random_checkpoint, tmp_path, make_image, precision
):
    image = make_image(tmp_path / "a.png")

    result = run("classify", random_checkpoint, image, "--json", "--precision", precision)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["precision"] == precision


@pytest.mark.model
def test_fp16_on_a_cpu_is_a_plain_error(random_checkpoint, tmp_path, make_image):
    image = make_image(tmp_path / "a.png")

    result = run("classify", random_checkpoint, image, "--device", "cpu", "--precision", "fp16")

    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: precision fp16 runs on CUDA only; use int8, bf16 or fp32 on a CPU"
    )


def test_classify_with_a_missing_model_fails_with_an_error_line(tmp_path, photo_and_junk):
    good, _ = photo_and_junk

    result = run("classify", tmp_path / "absent.pt", good, "--device", "cpu")

    assert_clean_failure(result)
    assert "model file not found" in result.output


# --- evaluate -----------------------------------------------------------------------------------


class Trap:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.model
def test_evaluate_refuses_an_unsafe_checkpoint(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 1, "bottoms/jeans": 1})
    marker = tmp_path / "pwned"
    model = tmp_path / "model.pt"
    torch.save(
        {"format": "refund-sorter-checkpoint/1", "x": Trap(f"touch {shlex.quote(str(marker))}")},
        model,
    )
    report = tmp_path / "eval.json"

    result = run("evaluate", model, data, "--report", report, "--device", "cpu")

    assert_clean_failure(result)
    assert f"refusing to load {model}" in result.output
    assert not marker.exists()
    assert not report.exists()


@pytest.mark.model
def test_evaluate_prints_a_summary_and_writes_the_report(
    random_checkpoint, tmp_path, make_dataset, make_broken_files
):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 2, "bottoms/jeans": 2, "shoes/boots": 2})
    broken = make_broken_files(data / "tops" / "shirt")
    report = tmp_path / "out" / "eval.json"

    result = run("evaluate", random_checkpoint, data, "--report", report, "--device", "cpu")

    assert result.exit_code == 0, result.output
    assert "4 images: main accuracy " in result.output
    assert "not in the model's taxonomy: shoes/boots (2 images, not scored)" in result.output
    for path in broken.values():
        assert f"skipped {path}: " in result.output
    pngs = [report.with_suffix(".png"), tmp_path / "out" / "eval-reliability.png"]
    pngs.append(tmp_path / "out" / "eval-coverage.png")
    assert f"report: {report}, {', '.join(map(str, pngs))}" in result.output
    assert "expected calibration error (15 bins), before -> after temperature 1.000" in (
        result.output
    )
    assert "the model's review threshold 0.600 flags " in result.output
    assert json.loads(report.read_text())["n_images"] == 4
    assert json.loads(report.read_text())["precision"] in ("fp32", "bf16")
    assert all(png.is_file() for png in pngs)


# --- numbers and paths that cannot work are refused before any work is done ------------------


@pytest.mark.parametrize("option", [["--epochs", "0"], ["--batch-size", "1"]])
def test_train_refuses_unusable_numbers_up_front(tmp_path, make_dataset, option):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 3, "bottoms/jeans": 3})
    args = [*FAST, *option]  # the later option wins

    result = run("train", data, "--out", tmp_path / "m.pt", *args)

    assert result.exit_code == 2, repr(result.exception)  # click's usage error, no traceback


def test_train_refuses_a_folder_as_the_model_file(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 3, "bottoms/jeans": 3})
    (tmp_path / "models").mkdir()

    result = run("train", data, "--out", tmp_path / "models", "--val-fraction", "0.3", *FAST)

    assert result.exit_code == 2, repr(result.exception)


# --- the recipe's knobs, cross-validation -------------------------------------------------------


@pytest.mark.model
@pytest.mark.slow
def test_train_with_every_knob_on_records_them_in_the_model(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 8, "bottoms/jeans": 8})
    out = tmp_path / "model.pt"
    knobs = [
        *["--auto-augment", "ta_wide", "--random-erase", "0.25", "--label-smoothing", "0.05"],
        *["--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--model-ema"],
        *["--model-ema-decay", "0.9", "--balanced-sampling", "--review-target", "0.9"],
    ]

    result = run("train", data, "--out", out, "--val-fraction", "0.25", *FAST, *knobs)

    assert result.exit_code == 0, result.output
    args = load_checkpoint(out).meta["args"]
    assert {k: args[k] for k in ("auto_augment", "random_erase", "label_smoothing")} == {
        "auto_augment": "ta_wide",
        "random_erase": 0.25,
        "label_smoothing": 0.05,
    }
    assert (args["mixup_alpha"], args["cutmix_alpha"]) == (0.2, 1.0)
    assert (args["model_ema"], args["model_ema_decay"], args["balanced_sampling"]) == (
        True,
        0.9,
        True,
    )
    assert args["review_target"] == 0.9
    assert "images: 10 train, 4 validation, 2 calibration, 0 unreadable skipped" in result.output
    assert re.search(r"temperature \d+\.\d{3}, review threshold \d\.\d{3} \(", result.output)


@pytest.mark.parametrize(
    "option",
    [
        ["--auto-augment", "autoaugment"],
        ["--mixup-alpha", "-1"],
        ["--random-erase", "1.5"],
        ["--model-ema-decay", "1"],
        ["--review-target", "0"],
        ["--calibration-split", "1"],
        ["--label-smoothing", "1"],
        ["--folds", "-2"],
        ["--precision", "int8"],  # an inference precision: the model gets it after training
    ],
)
def test_train_refuses_knobs_out_of_range_up_front(tmp_path, make_dataset, option):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 3, "bottoms/jeans": 3})

    result = run("train", data, "--out", tmp_path / "m.pt", *FAST, *option)

    assert result.exit_code == 2, repr(result.exception)
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--fold", "1"], "error: --fold needs --folds K with K at least 2"),
        (["--folds", "3", "--fold", "4"], "error: --fold must be one of 1..3 (the held-out fold)"),
        (["--folds", "3"], "error: --fold must be one of 1..3 (the held-out fold)"),
    ],
)
def test_train_refuses_folds_that_do_not_fit(tmp_path, make_dataset, options, message):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 3, "bottoms/jeans": 3})

    result = run("train", data, "--out", tmp_path / "m.pt", *FAST, *options)

    assert_clean_failure(result)
    assert message in result.output
    assert not (tmp_path / "m.pt").exists()


def test_train_refuses_a_validation_folder_with_folds(tmp_path, make_dataset):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 3, "bottoms/jeans": 3})
    val = make_dataset(tmp_path / "val", {"tops/shirt": 1, "bottoms/jeans": 1})

    result = run(
        "train",
        data,
        "--out",
        tmp_path / "m.pt",
        *FAST,
        "--folds",
        "3",
        "--fold",
        "1",
        "--val",
        val,
    )

    assert_clean_failure(result)
    assert "--val cannot be combined with --folds" in result.output


@pytest.fixture(scope="module")
def two_folds(tmp_path_factory, make_dataset):
    """Folds 1 and 2 of a 3-fold cross-validation, trained one at a time as an operator
    would; fold 3 not run."""
    root = tmp_path_factory.mktemp("cv")
    data = make_dataset(root / "data", {"tops/shirt": 6, "bottoms/jeans": 6})
    outputs = []
    for fold in (2, 1):
        out = root / "runs" / f"fold-{fold}.pt"
        args = ["train", data, "--out", out, *FAST, "--batch-size", "4"]
        outputs.append(run(*args, "--folds", "3", "--fold", str(fold)))
        assert outputs[-1].exit_code == 0, outputs[-1].output
    return root, data, outputs


@pytest.mark.model
@pytest.mark.slow
def test_folds_run_one_at_a_time_then_summarise(two_folds):
    root, _, outputs = two_folds
    runs = root / "runs"
    assert f"fold result: {runs / 'fold-2.cv.json'}" in outputs[0].output
    assert "8 training and 4 validation files (fold 1 of 3, also the calibration data)" in (
        outputs[1].output
    )

    result = run("cv-summary", runs, "--out", root / "summary.json")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"cross-validation: 2 of 3 folds, seed 0, data {(root / 'data').resolve()}"
    per_fold = {line.split()[0]: line.split() for line in lines[2:6]}
    assert sorted(per_fold) == ["1", "2", "mean", "std"]
    assert "not run yet: fold 3" in result.output
    summary = json.loads((root / "summary.json").read_text())
    folds = [json.loads((runs / f"fold-{i}.cv.json").read_text()) for i in (1, 2)]
    assert [row["fold"] for row in summary["per_fold"]] == [1, 2]
    assert summary["missing_folds"] == [3]
    for key, level in (("main_accuracy", "main_accuracy"), ("sub_accuracy", "sub_accuracy")):
        values = [fold["last"][level] for fold in folds]
        assert summary["mean"][key] == pytest.approx(sum(values) / 2)
        assert per_fold["mean"][header_index(lines[1], "sub" if "sub" in key else "main")] == (
            f"{sum(values) / 2:.3f}"
        )
    assert summary["mean"]["temperature"] == pytest.approx(
        sum(fold["calibration"]["temperature"] for fold in folds) / 2
    )
    assert summary["recipe"]["epochs"] == 1 and "fold" not in summary["recipe"]


def header_index(header: str, name: str) -> int:
    return header.split().index(name)


@pytest.mark.model
@pytest.mark.slow
def test_cv_summary_refuses_folds_of_different_recipes(two_folds, tmp_path):
    root, _, _ = two_folds
    other = json.loads((root / "runs" / "fold-1.cv.json").read_text())
    other["recipe"]["lr"] = 0.01
    other["fold"] = 3
    (tmp_path / "fold-3.cv.json").write_text(json.dumps(other))

    result = run("cv-summary", root / "runs", tmp_path / "fold-3.cv.json")

    assert_clean_failure(result)
    assert f"were trained with other settings: lr 0.01 vs {TrainConfig().lr}" in result.output


@pytest.mark.model
@pytest.mark.slow
def test_cv_summary_refuses_a_fold_twice(two_folds):
    root, _, _ = two_folds
    fold = root / "runs" / "fold-1.cv.json"

    result = run("cv-summary", fold, fold)

    assert_clean_failure(result)
    assert "fold 1 appears twice" in result.output


def test_cv_summary_of_nothing_is_a_plain_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.cv.json").write_text("not json")
    (tmp_path / "other.cv.json").write_text(json.dumps({"kind": "something else"}))

    for args, message in (
        ([tmp_path / "empty"], "no fold results (*.cv.json) in"),
        ([tmp_path / "missing"], f"not found: {tmp_path / 'missing'}"),
        ([tmp_path / "notes.cv.json"], "cannot read"),
        ([tmp_path / "other.cv.json"], "is not a fold result of refund-sorter train --folds"),
    ):
        result = run("cv-summary", *args)
        assert_clean_failure(result)
        assert message in result.output


# --- the review threshold classify marks ---------------------------------------------------------


def get_settings_cache_clear() -> None:
    from refund_sorter.config import get_settings

    get_settings.cache_clear()


@pytest.fixture
def fresh_settings(monkeypatch):
    """``get_settings()`` re-read from the environment, without REFUND_SORTER_* variables."""
    for key in [k for k in os.environ if k.startswith("REFUND_SORTER_")]:
        monkeypatch.delenv(key)
    get_settings_cache_clear()
    yield monkeypatch
    get_settings_cache_clear()


@pytest.mark.model
def test_classify_marks_for_review_by_the_models_threshold_unless_set(
    random_checkpoint, tmp_path, make_image, fresh_settings
):
    images = [make_image(tmp_path / f"{i}.png", colour=(i * 60, 90, 30)) for i in range(3)]
    lenient, strict = tmp_path / "lenient.pt", tmp_path / "strict.pt"
    save_scaled_model(random_checkpoint, lenient, 1.0, review_threshold=0.0)
    save_scaled_model(random_checkpoint, strict, 1.0, review_threshold=1.0)

    def flagged(model):
        result = run("classify", model, *images, "--json", "--device", "cpu")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        return report["review_threshold"], [p["needs_review"] for p in report["predictions"]]

    assert flagged(lenient) == (0.0, [False] * 3)
    assert flagged(strict) == (1.0, [True] * 3)

    fresh_settings.setenv("REFUND_SORTER_REVIEW_THRESHOLD", "0")
    get_settings_cache_clear()
    assert flagged(strict) == (0.0, [False] * 3)

    table = run("classify", strict, images[0], "--device", "cpu")
    assert not table.stdout.rstrip().endswith("review")
    fresh_settings.delenv("REFUND_SORTER_REVIEW_THRESHOLD")
    get_settings_cache_clear()
    table = run("classify", strict, images[0], "--device", "cpu")
    assert table.stdout.rstrip().endswith("  review")
