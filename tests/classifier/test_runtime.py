"""classifier/runtime.py and ``resolve_runtime``: OpenVINO answers as PyTorch does, on real
photos, and its networks are kept in the model store, made again when missing or damaged."""

import logging
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from classifier import predict, runtime
from classifier.checkpoint import load_checkpoint
from classifier.predict import Classifier, resolve_runtime
from classifier.runtime import OpenVINONet, load_openvino, store_file
from refund_sorter.errors import UserError
from refund_sorter.images import open_rgb

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "assets/model/refund-sorter-resnet18.pt"
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
PASSING = {"agreement": {"main": 1.0, "sub": 0.995}}
FAILING = {"agreement": {"main": 1.0, "sub": 0.98}}


def real_photos(clf) -> torch.Tensor:
    """The README's sample returns (real photos), prepared as a worker prepares them."""
    paths = sorted((REPO / "assets/samples").glob("*.jpg"))
    tensors = []
    for path in paths:
        try:
            tensors.append(clf.preset(open_rgb(path.read_bytes())))
        except Exception:  # the samples hold a damaged upload on purpose
            continue
    assert len(tensors) >= 20
    return torch.stack(tensors)


@pytest.mark.model
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_answers_as_pytorch_fp32_on_real_photos(precision):
    """The shipped model's network in OpenVINO against PyTorch fp32 on the sample returns:
    fp32 to rounding, int8 within its rule's spirit (the 99% rule itself is checked by
    ``quantize`` on 512 held-out photos)."""
    reference = Classifier.from_path(SHIPPED, "cpu", "fp32", runtime="torch")
    clf = Classifier.from_path(SHIPPED, "cpu", precision, runtime="openvino")
    assert (clf.runtime, clf.precision) == ("openvino", precision)
    assert isinstance(clf.net, OpenVINONet)
    images = real_photos(clf)
    a, b = reference.predict_tensors(images), clf.predict_tensors(images)
    same = sum((x.main, x.sub) == (y.main, y.sub) for x, y in zip(a, b, strict=True))
    gaps = [abs(x.sub_confidence - y.sub_confidence) for x, y in zip(a, b, strict=True)]
    if precision == "fp32":
        assert same == len(images)
        assert max(gaps) < 1e-3, gaps
    else:
        assert same >= len(images) - 1
        assert sum(gaps) / len(gaps) < 0.05, gaps


@pytest.mark.model
def test_around_an_openvino_network_pytorch_keeps_to_the_calling_thread(monkeypatch):
    """The joint decision after an OpenVINO forward pass runs on one PyTorch thread (its idle
    threads would spin on OpenVINO's cores), and the process gets its threads back, even
    when the batch fails; a PyTorch network keeps its threads throughout."""
    seen = []
    decide = predict.joint_probabilities

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return decide(*args, **kwargs)

    monkeypatch.setattr(predict, "joint_probabilities", recording)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        by_runtime = {}
        for name in ("openvino", "torch"):
            clf = Classifier.from_path(SHIPPED, "cpu", "fp32", runtime=name)
            seen.clear()
            clf.predict_tensors(real_photos(clf)[:4])
            by_runtime[name] = (seen[:], torch.get_num_threads())
        assert by_runtime == {"openvino": ([1], 2), "torch": ([2], 2)}
        clf = Classifier.from_path(SHIPPED, "cpu", "fp32", runtime="openvino")
        with pytest.raises(RuntimeError):
            clf.predict_tensors(torch.zeros(1, 3, 7, 7, dtype=torch.uint8))  # the wrong size
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.model
def test_one_openvino_network_classifies_for_several_threads_at_once():
    """The threads pool runs two batches at once on its process's one network: each thread
    gets every answer it would get alone, and none is told the network is busy."""
    clf = Classifier.from_path(SHIPPED, "cpu", "int8", runtime="openvino")
    images = real_photos(clf)
    alone = [(x.main, x.sub, x.sub_confidence) for x in clf.predict_tensors(images)]
    start = threading.Barrier(3)
    answers, errors = [], []

    def classify() -> None:
        start.wait()
        try:
            for _ in range(20):
                answers.append(
                    [(x.main, x.sub, x.sub_confidence) for x in clf.predict_tensors(images)]
                )
        except Exception as exc:  # what the test is about: reported below, not raised here
            errors.append(repr(exc))

    threads = [threading.Thread(target=classify) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert answers == [alone] * 60


@pytest.mark.model
def test_the_shipped_model_carries_a_checked_openvino_int8_network():
    ckpt = load_checkpoint(SHIPPED)
    entry = ckpt.openvino_int8
    assert min(entry["agreement"].values()) >= 0.99
    assert entry["photos"]["agreement"] >= 500
    clf = Classifier(ckpt, "cpu", runtime="auto")
    assert (clf.runtime, clf.precision) == ("openvino", "int8")  # with OpenVINO installed


def test_auto_takes_the_fastest_runtime_that_passes(monkeypatch):
    monkeypatch.setattr(predict, "native_bf16", lambda: False)
    monkeypatch.setattr(predict, "openvino_installed", lambda: True)

    def ckpt(int8=None, ov=None):
        return SimpleNamespace(int8=int8, openvino_int8=ov)

    assert resolve_runtime("auto", "auto", CPU, ckpt(PASSING, PASSING)) == ("openvino", "int8")
    assert resolve_runtime("auto", "auto", CPU, ckpt(PASSING, FAILING)) == ("torch", "int8")
    assert resolve_runtime("auto", "auto", CPU, ckpt(FAILING, FAILING)) == ("openvino", "fp32")
    assert resolve_runtime("auto", "auto", CPU, ckpt()) == ("openvino", "fp32")
    monkeypatch.setattr(predict, "native_bf16", lambda: True)
    assert resolve_runtime("auto", "auto", CPU, ckpt()) == ("openvino", "bf16")
    # Asked for: the operator decides, the agreement notwithstanding.
    assert resolve_runtime("auto", "int8", CPU, ckpt(FAILING, FAILING)) == ("openvino", "int8")
    assert resolve_runtime("auto", "int8", CPU, ckpt(PASSING)) == ("torch", "int8")
    assert resolve_runtime("torch", "auto", CPU, ckpt(PASSING, PASSING)) == ("torch", "int8")
    assert resolve_runtime("openvino", "auto", CPU, ckpt(PASSING)) == ("openvino", "bf16")
    assert resolve_runtime("auto", "auto", CUDA, ckpt(PASSING, PASSING)) == ("torch", "fp16")
    monkeypatch.setattr(predict, "openvino_installed", lambda: False)
    assert resolve_runtime("auto", "auto", CPU, ckpt(PASSING, PASSING)) == ("torch", "int8")


def test_what_cannot_run_is_a_plain_error(monkeypatch):
    monkeypatch.setattr(predict, "openvino_installed", lambda: True)
    none = SimpleNamespace(int8=None, openvino_int8=None)
    with pytest.raises(UserError, match="runs on a CPU only"):
        resolve_runtime("openvino", "auto", CUDA, none)
    with pytest.raises(UserError, match="no OpenVINO int8 network; make one with"):
        resolve_runtime("openvino", "int8", CPU, SimpleNamespace(int8=PASSING, openvino_int8=None))
    with pytest.raises(UserError, match="fp16 runs on CUDA only"):
        resolve_runtime("openvino", "fp16", CPU, none)
    with pytest.raises(UserError, match="unknown runtime 'tensorrt'"):
        resolve_runtime("tensorrt", "auto", CPU, none)
    monkeypatch.setattr(predict, "openvino_installed", lambda: False)
    with pytest.raises(UserError, match=r"OpenVINO is not installed: install it with: pip"):
        resolve_runtime("openvino", "auto", CPU, none)


@pytest.mark.model
def test_the_store_keeps_the_network_and_makes_a_damaged_one_again(
    random_checkpoint, tmp_path, monkeypatch, caplog
):
    ckpt = load_checkpoint(random_checkpoint)
    store = tmp_path / "store"
    x = torch.randint(0, 255, (4, 3, ckpt.image_size, ckpt.image_size), dtype=torch.uint8)
    first = load_openvino(ckpt, "fp32", 1, store)
    path = store_file(store, ckpt.version, "fp32")
    assert path.name.startswith(f"{ckpt.version}.openvino-") and path.name.endswith(".float.zip")
    made = path.read_bytes()
    weights = zipfile.ZipFile(path).read("model.bin")

    # Kept: the next process loads the store's file and converts nothing.
    def no_conversion(_):
        raise AssertionError("converted again")

    monkeypatch.setattr(runtime, "convert", no_conversion)
    again = load_openvino(ckpt, "fp32", 1, store)
    assert torch.equal(again(x)[1], first(x)[1])
    monkeypatch.undo()

    # Damaged: a byte changed inside the weights (the zip's CRC), then half a file.
    flipped = bytearray(made)
    flipped[len(made) // 2] ^= 0xFF
    for damaged in (bytes(flipped), made[: len(made) // 2]):
        path.write_bytes(damaged)
        with caplog.at_level(logging.WARNING, logger="classifier.runtime"):
            remade = load_openvino(ckpt, "fp32", 1, store)
        assert "is damaged" in caplog.text
        caplog.clear()
        assert torch.equal(remade(x)[1], first(x)[1])
        assert zipfile.ZipFile(path).read("model.bin") == weights


@pytest.mark.model
def test_a_store_that_cannot_be_written_only_costs_the_conversion(
    random_checkpoint, tmp_path, caplog
):
    ckpt = load_checkpoint(random_checkpoint)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store should be")
    with caplog.at_level(logging.WARNING, logger="classifier.runtime"):
        net = load_openvino(ckpt, "fp32", 1, blocked)
    assert "cannot keep the OpenVINO network in the model store" in caplog.text
    x = torch.zeros(2, 3, ckpt.image_size, ckpt.image_size, dtype=torch.uint8)
    main, sub = net(x)
    assert main.shape == (2, len(ckpt.taxonomy.main)) and sub.shape == (2, len(ckpt.taxonomy.sub))
