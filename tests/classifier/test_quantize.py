"""classifier/quantize.py, classifier/int8.py and ``refund-sorter quantize``: int8 that keeps
the answers."""

import json

import pytest
import torch
from click.testing import CliRunner

from classifier import predict
from classifier.checkpoint import load_checkpoint
from classifier.int8 import int8_network, passes
from classifier.network import build_network
from classifier.predict import Classifier, resolve_precision
from cli import main
from refund_sorter.errors import UserError
from refund_sorter.images import open_rgb

CPU = torch.device("cpu")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def int8_model(trained_model, tmp_path_factory):
    """The session's trained model, calibrated for int8 on its own training folder."""
    summary, held_out, _ = trained_model
    out = tmp_path_factory.mktemp("int8") / "model-int8.pt"
    train_dir = held_out.parent / "train"
    result = run(
        "quantize", summary.model_path, train_dir, "--out", out, "--photos", 64, "--check", 32
    )
    assert result.exit_code == 0, result.output
    return out, held_out, result.output


@pytest.mark.model
@pytest.mark.slow
def test_quantize_stores_ranges_and_the_measured_agreement(int8_model, trained_model):
    path, _, output = int8_model
    ckpt = load_checkpoint(path)
    for name, entry in (("PyTorch", ckpt.int8), ("OpenVINO", ckpt.openvino_int8)):
        assert entry["photos"] == {"calibration": 64, "agreement": 32}
        agreement = entry["agreement"]
        assert (
            f"{name} int8 calibrated on 64 photos; top-1 agreement with fp32 on 32 others: "
            f"main {agreement['main']:.4f}, sub {agreement['sub']:.4f}" in output
        )
        # A model whose classes differ plainly keeps most of its answers in int8. Over seeds
        # of the session's model in fp32 and bf16, on AVX-512 and held to AVX2, PyTorch's
        # worst was 0.9375 (bench/training_tests.py).
        assert min(agreement.values()) >= 0.8
    torch_verdict = "PyTorch int8" if passes(ckpt.int8) else "fp32 or bf16"
    verdict = (
        f"picks OpenVINO int8 where OpenVINO is installed, else {torch_verdict}"
        if passes(ckpt.openvino_int8)
        else f"picks {torch_verdict}"
    )
    assert f"automatic precision on a CPU {verdict}" in output
    # The weights are the trained model's: only the calibration was added.
    original = load_checkpoint(trained_model[0].model_path)
    assert original.int8 is None
    for key, value in original.state_dict.items():
        assert torch.equal(value, ckpt.state_dict[key]), key


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_int8_classifies_like_fp32(int8_model, runtime):
    path, held_out, _ = int8_model
    images = sorted(p for p in held_out.rglob("*.png") if "vest" not in str(p))
    fp32 = Classifier.from_path(path, "cpu", "fp32", runtime="torch")
    int8 = Classifier.from_path(path, "cpu", "int8", runtime=runtime)
    assert (int8.runtime, int8.precision) == (runtime, "int8")
    assert type(int8.net) is not type(fp32.net)  # the int8 network, not the float one
    tensors = [int8.preset(open_rgb(p)) for p in images]
    a, b = fp32.predict_tensors(tensors), int8.predict_tensors(tensors)
    same = sum((x.main, x.sub) == (y.main, y.sub) for x, y in zip(a, b, strict=True))
    # Over seeds in fp32 and bf16, on AVX-512 and held to AVX2 (bench/training_tests.py): at
    # worst 30 of these 32 images alike (0.9375), and a mean gap of 0.015.
    assert same / len(images) >= 0.8
    gaps = [abs(x.sub_confidence - y.sub_confidence) for x, y in zip(a, b, strict=True)]
    assert sum(gaps) / len(gaps) < 0.15, gaps


def test_auto_takes_int8_only_when_its_agreement_passes_the_rule(monkeypatch):
    monkeypatch.setattr(predict, "native_bf16", lambda: False)
    good = {"ranges": {}, "agreement": {"main": 0.995, "sub": 0.99}}
    bad = {"ranges": {}, "agreement": {"main": 1.0, "sub": 0.985}}
    assert passes(good) and not passes(bad) and not passes(None)
    assert resolve_precision("auto", CPU, good) == "int8"
    assert resolve_precision("auto", CPU, bad) == "fp32"
    assert resolve_precision("auto", CPU, None) == "fp32"
    assert resolve_precision("auto", torch.device("cuda"), good) == "fp16"
    assert resolve_precision("int8", CPU, bad) == "int8"  # asked for: the operator decides


@pytest.mark.model
def test_int8_without_a_calibration_or_on_a_gpu_is_a_user_error(random_checkpoint):
    for runtime in ("auto", "torch"):
        with pytest.raises(UserError, match="no int8 calibration; make one with: refund-sorter"):
            Classifier.from_path(random_checkpoint, "cpu", "int8", runtime=runtime)
    with pytest.raises(UserError, match="int8 runs on CPU only"):
        resolve_precision("int8", torch.device("cuda"), {"agreement": {"main": 1, "sub": 1}})


@pytest.mark.model
@pytest.mark.slow
def test_ranges_of_another_network_are_refused(int8_model, random_checkpoint):
    ranges = load_checkpoint(int8_model[0]).int8["ranges"]
    other = load_checkpoint(random_checkpoint)
    del ranges[next(iter(ranges))]
    with pytest.raises(ValueError, match="does not fit this network"):
        int8_network(build_network(other), ranges, other.image_size)


@pytest.mark.model
@pytest.mark.slow
def test_evaluate_reports_every_mode_with_its_agreement(int8_model, tmp_path):
    path, held_out, _ = int8_model
    report = tmp_path / "report.json"
    result = run(
        "evaluate", path, held_out, "--report", report, "--device", "cpu", "--precision", "int8"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["precision"] == "int8"
    modes = data["modes"]
    assert set(modes) == {"fp32", "bf16", "int8"}
    assert modes["fp32"]["main_agreement"] == modes["fp32"]["sub_agreement"] == 1.0
    assert modes["int8"]["sub_agreement"] >= 0.8  # at worst 0.9375 over seeds, as above
    assert modes["int8"]["sub_accuracy"] == pytest.approx(data["sub_accuracy"])
    assert "int8: main" in result.output and "agreement with fp32" in result.output


@pytest.mark.model
def test_quantize_with_too_few_photos_is_a_plain_error(random_checkpoint, tmp_path, make_image):
    make_image(tmp_path / "data" / "tops" / "shirt" / "a.png")
    out = tmp_path / "q.pt"
    result = run("quantize", random_checkpoint, tmp_path / "data", "--out", out)
    assert result.exit_code == 1, result.output
    assert "error: int8 calibration needs photos to calibrate on and others" in result.output
    assert not out.exists()
