"""The dual-head network: a torchvision ResNet18 backbone with one linear head per level."""

from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from classifier.checkpoint import Checkpoint
from refund_sorter.errors import UserError

ARCH = "resnet18"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DualHeadNet(nn.Module):
    def __init__(self, n_main: int, n_sub: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = resnet18()
        features = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.main_head = nn.Linear(features, n_main)
        self.sub_head = nn.Linear(features, n_sub)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.dropout(self.backbone(x))
        return self.main_head(features), self.sub_head(features)


def build_network(checkpoint: Checkpoint) -> DualHeadNet:
    if checkpoint.arch != ARCH:
        raise UserError(f"unsupported architecture in checkpoint: {checkpoint.arch}")
    tax = checkpoint.taxonomy
    net = DualHeadNet(len(tax.main), len(tax.sub))
    net.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in checkpoint.state_dict.items()}
    )
    return net


class PretrainedUnavailable(UserError):
    pass


def load_backbone_weights(net: DualHeadNet, pretrained: str) -> str:
    """Initialise the backbone: ``none``, ``imagenet`` or a path to a local weights file.

    Returns a short description of the source for the checkpoint's metadata. Never falls
    back silently: weights that cannot be had raise PretrainedUnavailable.
    """
    if pretrained == "none":
        return "none"
    if pretrained == "imagenet":
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
    path = Path(pretrained)
    if not path.is_file():
        raise PretrainedUnavailable(
            f"--pretrained must be 'imagenet', 'none' or a weights file; {path} does not exist"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedUnavailable(f"cannot load weights from {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:  # a refund-sorter checkpoint
        state = {
            k.removeprefix("backbone."): v
            for k, v in state["state_dict"].items()
            if k.startswith("backbone.")
        }
    _load_into_backbone(net, state, str(path))
    return f"file:{path.name}"


def _load_into_backbone(net: DualHeadNet, state: dict, source: str) -> None:
    if not isinstance(state, dict):
        raise PretrainedUnavailable(f"{source} is not a state dict of a ResNet18")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = net.backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or shapes:
        raise PretrainedUnavailable(
            f"{source} does not fit a ResNet18 backbone "
            f"(missing: {missing[:3]}, wrong shape: {shapes[:3]})"
        )
    net.backbone.load_state_dict({k: state[k].float() for k in expected}, strict=True)
