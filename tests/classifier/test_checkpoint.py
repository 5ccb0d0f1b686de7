"""classifier/checkpoint.py, and classifier/network.py building the network a checkpoint names.

A model file carries everything inference needs, has a version derived from its bytes,
and is never allowed to run code when loaded.
"""

import hashlib
import os
import re
import shlex
import zipfile
from pathlib import Path

import pytest
import torch

from classifier.checkpoint import (
    DEFAULT_REVIEW_THRESHOLD,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from classifier.network import IMAGENET_MEAN, IMAGENET_STD, DualHeadNet, build_network
from refund_sorter.errors import UserError
from refund_sorter.taxonomy import Taxonomy

TAXONOMY = Taxonomy(("bottoms", "tops"), ("jeans", "skirt", "shirt"), (0, 0, 1))


@pytest.fixture(scope="module")
def net() -> DualHeadNet:
    torch.manual_seed(3)
    net = DualHeadNet(len(TAXONOMY.main), len(TAXONOMY.sub)).eval()
    # Non-trivial BatchNorm statistics, so the round trip has to carry buffers too.
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)
    return net


def make_checkpoint(net: DualHeadNet, **meta) -> Checkpoint:
    return Checkpoint(
        state_dict=net.state_dict(),
        taxonomy=TAXONOMY,
        arch="resnet18",
        image_size=48,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        meta={"epochs": 3, "metrics": {"sub_accuracy": 0.75}, **meta},
    )


def sha12(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@pytest.mark.model
def test_round_trip_keeps_everything_inference_needs(net, tmp_path):
    path = tmp_path / "models" / "model.pt"  # the folder does not exist yet

    version = save_checkpoint(make_checkpoint(net, note="first"), path)
    loaded = load_checkpoint(path)

    assert loaded.taxonomy == TAXONOMY
    assert loaded.arch == "resnet18"
    assert loaded.image_size == 48
    assert loaded.mean == pytest.approx(IMAGENET_MEAN)
    assert loaded.std == pytest.approx(IMAGENET_STD)
    assert loaded.meta == {"epochs": 3, "metrics": {"sub_accuracy": 0.75}, "note": "first"}
    assert loaded.version == version
    assert sorted(os.listdir(path.parent)) == ["model.pt"], "no temporary file is left behind"


def test_version_is_the_start_of_the_files_sha256(net, tmp_path):
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"

    version_a = save_checkpoint(make_checkpoint(net, note="one"), a)
    version_b = save_checkpoint(make_checkpoint(net, note="one"), b)
    version_c = save_checkpoint(make_checkpoint(net, note="two"), c)

    assert version_a == sha12(a)
    assert len(version_a) == 12 and int(version_a, 16) >= 0
    assert version_b == version_a, "equal content, equal version"
    assert version_c == sha12(c) != version_a, "other content, other version"


@pytest.mark.model
def test_weights_are_stored_as_float16_and_give_nearly_the_same_outputs(net, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(make_checkpoint(net), path)

    loaded = load_checkpoint(path)

    original = net.state_dict()
    assert loaded.state_dict.keys() == original.keys()
    for key, value in loaded.state_dict.items():
        if original[key].is_floating_point():
            assert value.dtype == torch.float16, key
            assert torch.equal(value, original[key].half()), key
        else:
            assert value.dtype == original[key].dtype, key
            assert torch.equal(value, original[key]), key
    assert os.path.getsize(path) < 0.6 * 4 * sum(v.numel() for v in original.values())

    x = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    reloaded = build_network(loaded).eval()
    with torch.no_grad():
        for before, after in zip(net(x), reloaded(x), strict=True):
            assert after.dtype == torch.float32
            scale = float(before.abs().max())
            torch.testing.assert_close(after, before, rtol=0, atol=0.01 * scale + 1e-4)


# --- calibration: the temperature and the review threshold -------------------------------------

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.model
def test_round_trip_keeps_the_temperature_and_the_review_threshold(net, tmp_path):
    checkpoint = make_checkpoint(net)
    checkpoint.temperature, checkpoint.review_threshold = 1.7, 0.43
    path = tmp_path / "calibrated.pt"

    save_checkpoint(checkpoint, path)
    loaded = load_checkpoint(path)

    assert (loaded.temperature, loaded.review_threshold) == (1.7, 0.43)
    assert torch.load(path, weights_only=True)["format"] == "refund-sorter-checkpoint/3"


@pytest.mark.model
def test_a_new_checkpoint_without_calibration_has_the_defaults(net, tmp_path):
    save_checkpoint(make_checkpoint(net), tmp_path / "m.pt")

    loaded = load_checkpoint(tmp_path / "m.pt")

    assert (loaded.temperature, loaded.review_threshold) == (1.0, DEFAULT_REVIEW_THRESHOLD)


@pytest.mark.model
def test_a_format_1_checkpoint_loads_with_temperature_1_and_the_old_threshold(net, tmp_path):
    # What save_checkpoint wrote before checkpoints carried a calibration.
    payload = make_checkpoint(net).to_payload()
    payload["format"] = "refund-sorter-checkpoint/1"
    del payload["calibration"]
    path = tmp_path / "old.pt"
    torch.save(payload, path)

    loaded = load_checkpoint(path)

    assert (loaded.temperature, loaded.review_threshold) == (1.0, 0.6)
    assert loaded.taxonomy == TAXONOMY


@pytest.mark.model
def test_the_shipped_model_predates_calibration_and_loads_with_the_defaults():
    loaded = load_checkpoint(ROOT / "assets" / "model" / "refund-sorter-resnet18.pt")

    assert (loaded.temperature, loaded.review_threshold) == (1.0, 0.6)


@pytest.mark.model
def test_a_checkpoint_of_a_newer_format_is_refused_with_a_reason(net, tmp_path):
    payload = make_checkpoint(net).to_payload()
    payload["format"] = "refund-sorter-checkpoint/4"
    path = tmp_path / "future.pt"
    torch.save(payload, path)

    with pytest.raises(
        CheckpointError, match="refund-sorter-checkpoint/4 file, written by a newer"
    ):
        load_checkpoint(path)


@pytest.mark.model
@pytest.mark.parametrize(
    "calibration",
    [
        {"temperature": 0.0},
        {"temperature": -1.0},
        {"temperature": float("inf")},
        {"temperature": "hot"},
        {"review_threshold": 1.5},
        {"review_threshold": None},
        "calibrated",
    ],
)
def test_an_unusable_calibration_is_refused(net, tmp_path, calibration):
    payload = make_checkpoint(net).to_payload()
    payload["calibration"] = calibration
    path = tmp_path / "odd.pt"
    torch.save(payload, path)

    with pytest.raises(CheckpointError, match=r"odd\.pt holds an unusable"):
        load_checkpoint(path)


def test_an_unknown_architecture_is_refused(net):
    checkpoint = make_checkpoint(net)
    checkpoint.arch = "vit_b_16"

    with pytest.raises(
        UserError, match="unknown architecture 'vit_b_16': this refund-sorter builds"
    ):
        build_network(checkpoint)


# --- files that must not be trusted -----------------------------------------------------------


class Garment:
    """A harmless custom class: still not plain data."""

    def __init__(self) -> None:
        self.size = "M"


class Trap:
    """Unpickling this would run a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.model
def test_a_checkpoint_that_would_run_code_is_refused(net, tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    payload = make_checkpoint(net).to_payload()
    payload["meta"]["trap"] = Trap(f"touch {shlex.quote(str(marker))}")
    torch.save(payload, path)

    with pytest.raises(CheckpointError, match="refusing to load") as info:
        load_checkpoint(path)

    assert not marker.exists(), "loading must not execute anything"
    assert str(path) in str(info.value)
    assert "system" in str(info.value)  # names what it refused


@pytest.mark.model
def test_a_checkpoint_with_custom_objects_is_refused(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"format": "refund-sorter-checkpoint/1", "extra": Garment()}, path)

    with pytest.raises(CheckpointError, match=r"refusing to load .*Garment"):
        load_checkpoint(path)


@pytest.mark.model
def test_a_plain_torch_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)

    with pytest.raises(CheckpointError, match="not a refund-sorter checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"definitely not a model\n", os.urandom(256), b"\x80\x02}q\x00."],
    ids=["empty", "text", "random", "old-pickle"],
)
def test_a_file_that_is_not_a_checkpoint_is_refused_as_such(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)

    message = str(info.value)
    assert message == f"{path} is not a refund-sorter checkpoint (not a PyTorch file)"
    assert "could run code" not in message  # not mistaken for an attack


@pytest.mark.model
def test_a_zip_that_is_not_a_torch_file_is_not_readable(tmp_path):
    path = tmp_path / "photos.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "hello")

    with pytest.raises(CheckpointError, match=r"photos\.pt is not a readable checkpoint"):
        load_checkpoint(path)


def test_a_missing_model_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nothing.pt"

    with pytest.raises(CheckpointError, match=re.escape(f"model file not found: {missing}")):
        load_checkpoint(missing)
