"""Train and eval preprocessing: two named objects, so evaluation never sees augmentation.

Images are squashed to a square (the whole garment stays in view; a centre crop would cut
sleeves or hems) and kept as uint8 until the batch is normalised on its way into the net.
"""

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


def to_square(img: Image.Image, size: int) -> torch.Tensor:
    """Resize an RGB image to ``size`` x ``size`` and return it as a uint8 CHW tensor."""
    img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return F.pil_to_tensor(img)


class EvalPreset:
    """Deterministic: what evaluation, ``classify`` and the workers use."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_square(img, self.image_size)


class TrainPreset:
    """Random crops, flips and mild colour changes on a cached uint8 square."""

    def __init__(self, image_size: int) -> None:
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(image_size, scale=(0.3, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25),
            ]
        )

    def __call__(self, square: torch.Tensor) -> torch.Tensor:
        return self.transform(square)


def cache_size(image_size: int) -> int:
    """Side of the square kept in memory while training: room for crops at full detail."""
    return round(image_size * 1.25)


def normalize(batch: torch.Tensor, mean, std, channels_last: bool) -> torch.Tensor:
    """uint8 NCHW -> normalised float, in the memory layout the network runs fastest in."""
    mean_t = torch.tensor(mean, device=batch.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=batch.device).view(1, -1, 1, 1)
    out = (batch.float() / 255.0 - mean_t) / std_t
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out
