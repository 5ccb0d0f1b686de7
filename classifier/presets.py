"""Train and eval preprocessing: two named objects, so evaluation never sees augmentation,
and the batch-level mixing (MixUp, CutMix) that training may add.

Images are squashed to a square (the whole garment stays in view; a centre crop would cut
sleeves or hems) and kept as uint8 until the batch is normalised on its way into the net,
with the normalisation of the model's backbone. A checkpoint names its resize rule
(``RESIZE_RULES``), so that another rule would reach the workers with the model that needs
it; a rule this code does not know is refused, never replaced.
"""

import math
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from refund_sorter.errors import UserError

# How a photo becomes the network's square input. "squash": resized to the square whole.
SQUASH = "squash"
RESIZE_RULES = (SQUASH,)


def erase_fill(mean) -> list[int]:
    """What RandomErasing paints: the mean colour, which normalisation turns into zeros, as
    torchvision's references erase after normalising."""
    return [round(255 * m) for m in mean]


def to_square(img: Image.Image, size: int) -> torch.Tensor:
    """Resize an RGB image to ``size`` x ``size`` and return it as a uint8 CHW tensor."""
    img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return F.pil_to_tensor(img)


@dataclass(frozen=True)
class EvalPreset:
    """Deterministic: what evaluation, ``classify`` and the workers use. Two models whose
    presets are equal take the same input tensors (each normalises them itself)."""

    image_size: int
    resize: str = SQUASH

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise UserError(
                f"the model resizes photos by the rule {self.resize!r}, which this "
                f"refund-sorter does not know ({', '.join(RESIZE_RULES)}): upgrade it to "
                "serve this model"
            )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_square(img, self.image_size)


class TrainPreset:
    """Random crops and flips on a cached uint8 square, then mild colour changes or, with
    ``auto_augment``, TrivialAugmentWide (``ta_wide``) or RandAugment (``ra``) instead, and
    with probability ``random_erase`` a random rectangle erased, painted in ``mean``, the
    backbone's mean colour."""

    def __init__(
        self, image_size: int, mean, auto_augment: str = "none", random_erase: float = 0.0
    ):
        steps = [
            v2.RandomResizedCrop(image_size, scale=(0.3, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if auto_augment == "ta_wide":
            steps.append(v2.TrivialAugmentWide())
        elif auto_augment == "ra":
            steps.append(v2.RandAugment())
        elif auto_augment == "none":
            steps.append(v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25))
        else:
            raise ValueError(f"unknown auto_augment {auto_augment!r}")
        if random_erase > 0:
            steps.append(v2.RandomErasing(p=random_erase, value=erase_fill(mean)))
        self.transform = v2.Compose(steps)

    def __call__(self, square: torch.Tensor) -> torch.Tensor:
        return self.transform(square)


class MixupCutmix:
    """MixUp or CutMix on a normalised training batch, one of them chosen at random per batch
    when both are on, as torchvision's references do. Each image is mixed with the one before
    it in the batch (batches come in random order). Both heads' targets are mixed with the
    same partner and the same lambda, so the main target always equals the sub target summed
    over each main category's subs."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, n_main: int, n_sub: int):
        alphas = (("mixup", mixup_alpha), ("cutmix", cutmix_alpha))
        self.choices = [(name, alpha) for name, alpha in alphas if alpha > 0]
        if not self.choices:
            raise ValueError("MixupCutmix needs mixup_alpha or cutmix_alpha above 0")
        self.n_main, self.n_sub = n_main, n_sub

    def __call__(
        self, images: torch.Tensor, main_y: torch.Tensor, sub_y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, C, H, W) float images and class indices -> mixed images, main and sub targets
        (N, n_classes) as probabilities."""
        name, alpha = self.choices[int(torch.randint(len(self.choices), ()))]
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        partner = images.roll(1, 0)
        if name == "mixup":
            images = images * lam + partner * (1 - lam)
        else:
            images, lam = _paste_box(images, partner, lam)
        return (
            images,
            mixed_targets(main_y, self.n_main, lam),
            mixed_targets(sub_y, self.n_sub, lam),
        )


def _paste_box(images: torch.Tensor, partner: torch.Tensor, lam: float):
    """CutMix: a box of about (1 - lam) of the area, at a random place, from the partner;
    lam is then corrected to the share of the image the box left."""
    h, w = images.shape[-2:]
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    half = 0.5 * math.sqrt(1.0 - lam)
    y1, y2 = max(cy - int(half * h), 0), min(cy + int(half * h), h)
    x1, x2 = max(cx - int(half * w), 0), min(cx + int(half * w), w)
    images = images.clone()
    images[..., y1:y2, x1:x2] = partner[..., y1:y2, x1:x2]
    return images, 1.0 - (y2 - y1) * (x2 - x1) / (h * w)


def mixed_targets(labels: torch.Tensor, n_classes: int, lam: float) -> torch.Tensor:
    """Targets for images mixed with the one before them: lam of each image's own class,
    1 - lam of its partner's."""
    one_hot = torch.nn.functional.one_hot(labels, n_classes).float()
    return one_hot * lam + one_hot.roll(1, 0) * (1 - lam)


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
