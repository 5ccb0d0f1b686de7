"""The dual-head network: a backbone (ResNet18 or an EfficientNet-Lite) with one linear head
per level, and the backbones a checkpoint may name.

A checkpoint records its backbone (``arch``) and the image size it was trained at;
``build_network`` makes the network from those alone, so a worker needs PyTorch and the
checkpoint, never a weight package. Where each backbone's ImageNet weights come from is
``classifier.pretrained``'s.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import resnet18

from classifier.checkpoint import Checkpoint
from classifier.efficientnet_lite import HEAD_CHANNELS, VARIANTS, EfficientNetLite
from refund_sorter.errors import UserError

# The normalisation torchvision's ImageNet weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow's EfficientNet-Lite: (x - 127) / 128 on 0..255, as timm's tf_efficientnet_lite
# configurations state it.
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Backbone:
    """A backbone a checkpoint may name: how to build it for an image size (the module, and
    how many features it pools), and the normalisation its ImageNet weights expect, which a
    model trained on it keeps, so that ``--pretrained`` changes the weights, not the input."""

    build: Callable[[int], tuple[nn.Module, int]]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # The built module's stages in order, input to pooled features, as modules holding its
    # own layers: what ``DualHeadNet.tail`` trains and ``DualHeadNet.trunk`` freezes.
    stages: Callable[[nn.Module], list[nn.Module]]


def _resnet18(_image_size: int) -> tuple[nn.Module, int]:
    net = resnet18()
    features = net.fc.in_features
    net.fc = nn.Identity()
    return net, features


def _resnet18_stages(net: nn.Module) -> list[nn.Module]:
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return [
        stem,
        net.layer1,
        net.layer2,
        net.layer3,
        nn.Sequential(net.layer4, net.avgpool, nn.Flatten(1)),
    ]


def _lite(variant: str) -> Backbone:
    return Backbone(
        lambda size: (EfficientNetLite(variant, size), HEAD_CHANNELS),
        TF_LITE_MEAN,
        TF_LITE_STD,
        EfficientNetLite.stages,
    )


DEFAULT_ARCH = "resnet18"
BACKBONES = {DEFAULT_ARCH: Backbone(_resnet18, IMAGENET_MEAN, IMAGENET_STD, _resnet18_stages)} | {
    variant: _lite(variant) for variant in VARIANTS
}


def backbone(arch: str) -> Backbone:
    """The backbone named ``arch``; UserError naming those there are."""
    if arch not in BACKBONES:
        raise UserError(
            f"unknown architecture {arch!r}: this refund-sorter builds {', '.join(BACKBONES)}"
        )
    return BACKBONES[arch]


class DualHeadNet(nn.Module):
    """``arch``'s backbone, then dropout and a linear head per level. ``image_size`` is the
    side of the photos it will take: EfficientNet-Lite fixes its padding for it."""

    def __init__(
        self,
        n_main: int,
        n_sub: int,
        dropout: float = 0.2,
        arch: str = DEFAULT_ARCH,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.backbone, features = backbone(arch).build(image_size)
        self.dropout = nn.Dropout(dropout)
        self.main_head = nn.Linear(features, n_main)
        self.sub_head = nn.Linear(features, n_sub)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.backbone(x))

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features -> (main logits, sub logits)."""
        features = self.dropout(features)
        return self.main_head(features), self.sub_head(features)

    def head_parameters(self) -> list[nn.Parameter]:
        """The two heads' weights and biases (they learn at the full rate)."""
        return [*self.main_head.parameters(), *self.sub_head.parameters()]

    def stages(self) -> list[nn.Module]:
        """The backbone's stages, in order (its ``Backbone.stages``)."""
        return backbone(self.arch).stages(self.backbone)

    def trunk(self, train_stages: int) -> nn.Module:
        """The backbone but its last ``train_stages`` stages: photos -> what the tail takes."""
        stages = self.stages()
        return nn.Sequential(*stages[: len(stages) - train_stages])

    def tail(self, train_stages: int) -> "Tail":
        """The last ``train_stages`` stages and the heads, sharing this network's layers:
        the trunk's output -> logits, as ``forward`` computes them."""
        stages = self.stages()
        if not 0 < train_stages < len(stages):
            raise UserError(
                f"{self.arch} has {len(stages)} stages: train the last 1 to "
                f"{len(stages) - 1} of them, or all (0)"
            )
        return Tail(self, stages[len(stages) - train_stages :])


class Tail(nn.Module):
    """A network's last stages and its heads (``DualHeadNet.tail``)."""

    def __init__(self, net: DualHeadNet, stages: list[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.dropout, self.main_head, self.sub_head = net.dropout, net.main_head, net.sub_head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.dropout(self.stages(x))
        return self.main_head(features), self.sub_head(features)


def build_network(checkpoint: Checkpoint) -> DualHeadNet:
    """The checkpoint's network with its weights, in float32."""
    tax = checkpoint.taxonomy
    net = DualHeadNet(
        len(tax.main), len(tax.sub), arch=checkpoint.arch, image_size=checkpoint.image_size
    )
    net.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in checkpoint.state_dict.items()}
    )
    return net
