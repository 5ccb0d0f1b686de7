"""cli/model.py: the model commands (train, evaluate, classify), as an operator runs them.

Bad input must give a plain ``error:`` line and exit code 1, never a traceback; files that
cannot be read are named and skipped, not fatal.
"""

import json
import os
import shlex
from urllib.error import URLError

import pytest
import torch
from click.testing import CliRunner, Result

from classifier.checkpoint import load_checkpoint
from cli import main

FAST = ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--device", "cpu"]


def run(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_failure(result: Result) -> None:
    """Exit code 1 through the CLI's own error handling, not an escaped exception."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "error: " in result.output
    assert "Traceback" not in result.output


# --- train --------------------------------------------------------------------------------------


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


def test_train_with_imagenet_weights_offline_fails_with_advice(tmp_path, make_dataset, monkeypatch):
    data = make_dataset(tmp_path / "data", {"tops/shirt": 3, "bottoms/jeans": 3})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(*args, **kwargs):
        raise URLError("no internet here")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)

    result = run("train", data, "--out", tmp_path / "m.pt", "--pretrained", "imagenet", *FAST)

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
    _, main, main_conf, sub, sub_conf = rows[1].split()
    assert tax.index_of(main, sub) is not None
    assert 0 < float(sub_conf) <= float(main_conf) <= 1


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


def test_classify_good_images_exits_zero(random_checkpoint, tmp_path, make_image):
    images = [make_image(tmp_path / f"{i}.png", colour=(i * 60, 90, 30)) for i in range(3)]

    result = run("classify", random_checkpoint, *images, "--json", "--device", "cpu")

    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)["predictions"]
    assert [p["file"] for p in predictions] == [str(p) for p in images]
    assert all(p["status"] == "ok" for p in predictions)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_classify_runs_in_the_precision_asked_for(
    random_checkpoint, tmp_path, make_image, precision
):
    image = make_image(tmp_path / "a.png")

    result = run("classify", random_checkpoint, image, "--json", "--precision", precision)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["precision"] == precision


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
    assert f"report: {report} and {report.with_suffix('.png')}" in result.output
    assert json.loads(report.read_text())["n_images"] == 4
    assert json.loads(report.read_text())["precision"] in ("fp32", "bf16")
    assert report.with_suffix(".png").is_file()


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
