"""The training recipe: every training setting and its default, in one place.

Torch-free on purpose: the CLI reads its option defaults from ``TrainConfig`` at startup,
and the commands that never train must not pay for importing PyTorch.

The defaults are the recipe of the shipped EfficientNet-Lite0 (the candidate beside the
ResNet18 that serves by default): its ImageNet weights, its last three stages and the heads
fine-tuned at 224 px (docs/training.md, "Fine-tuning a pretrained backbone"). The knobs
beyond it follow torchvision's ``references/classification``; each one's default leaves
the recipe as it was before the knob existed. ``--backbone resnet18 --pretrained none
--train-stages 0 --epochs 60 --image-size 128 --lr 0.002`` is the recipe of the first
model, trained from scratch.
"""

from dataclasses import dataclass
from pathlib import Path

from refund_sorter.config import PRECISIONS
from refund_sorter.errors import UserError

# "ta_wide": TrivialAugmentWide; "ra": RandAugment (2 operations, magnitude 9).
AUTO_AUGMENTS = ("none", "ta_wide", "ra")
# The arithmetic training runs in. "auto": fp16 on CUDA, bf16 on a CPU that computes it
# natively, else fp32. int8 is not among them: it is an inference precision, calibrated on
# the trained model afterwards (``refund-sorter train --int8``, ``refund-sorter quantize``).
TRAIN_PRECISIONS = tuple(p for p in PRECISIONS if p != "int8")


@dataclass
class TrainConfig:
    epochs: int = 15
    image_size: int = 224
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    auto_augment: str = "none"  # one of AUTO_AUGMENTS; replaces the mild colour jitter
    random_erase: float = 0.0  # probability of erasing a random rectangle of each image
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) for MixUp; 0 = off
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) for CutMix; 0 = off
    model_ema: bool = False  # evaluate and save an exponential moving average of the weights
    # Per training step. The average spans about 1 / (1 - decay) steps: 500 here, a fifth of
    # a 60-epoch run on clothing-small's 3,000 photos in batches of 64.
    model_ema_decay: float = 0.998
    balanced_sampling: bool = False  # draw each sub category equally often
    device: str = "auto"
    precision: str = "auto"  # one of TRAIN_PRECISIONS; also that of validation and calibration
    # The backbone (classifier.network.BACKBONES): resnet18, efficientnet_lite0, 1 or 2.
    backbone: str = "efficientnet_lite0"
    pretrained: str = "imagenet"  # "none", "imagenet" or a path to a weights file
    # Fine-tuning a pretrained backbone on a small CPU: with N > 0 only the backbone's last N
    # stages and the heads learn. The stages before them keep their pretrained weights, so
    # their output for a photo never changes: it is computed once, for ``views`` augmented
    # views of each training photo, and each epoch trains on one view of each, drawn at
    # random. 0: the whole network learns, on photos augmented anew every epoch.
    train_stages: int = 3
    views: int = 4
    backbone_lr_scale: float = 0.2  # the backbone's learning rate, as a share of ``lr``
    seed: int = 0
    val_dir: Path | None = None  # a separate validation folder; else a split of the data
    val_fraction: float = 0.1
    # Cross-validation: with folds >= 2, the data is dealt into that many stratified folds
    # and fold number ``fold`` (1..folds) is the validation and calibration data.
    folds: int = 0
    fold: int = 0
    # Share of the training files held out to fit the temperature and choose the review
    # threshold (0: neither; the model keeps temperature 1 and the default threshold).
    calibration_split: float = 0.1
    review_target: float = 0.97  # accuracy the photos not flagged for review must reach
    mapping: Path | None = None  # the flat layout's JSON {"<sub>": "<main>"}

    def __post_init__(self) -> None:
        if self.auto_augment not in AUTO_AUGMENTS:
            raise UserError(
                f"unknown --auto-augment {self.auto_augment!r}; "
                f"choose one of {', '.join(AUTO_AUGMENTS)}"
            )
        if self.precision == "int8":
            raise UserError(
                "precision int8 is for inference only and cannot train: train in auto, fp32, "
                "bf16 or fp16; the saved model gets its int8 calibration afterwards"
            )
        if self.precision not in TRAIN_PRECISIONS:
            raise UserError(
                f"unknown training precision {self.precision!r}; "
                f"choose one of {', '.join(TRAIN_PRECISIONS)}"
            )
        if self.train_stages > 0 and self.pretrained == "none":
            raise UserError(
                "--train-stages freezes the backbone's first stages, which only makes sense "
                "for pretrained weights: give --pretrained imagenet (or a weights file), or "
                "train the whole network with --train-stages 0"
            )
        if self.train_stages > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0):
            raise UserError(
                "--train-stages trains on stored views of each photo, which MixUp and CutMix "
                "cannot mix: drop --mixup-alpha and --cutmix-alpha, or --train-stages"
            )
        if self.folds == 0 and self.fold == 0:
            return
        if self.folds < 2:
            raise UserError("--fold needs --folds K with K at least 2")
        if not 1 <= self.fold <= self.folds:
            raise UserError(f"--fold must be one of 1..{self.folds} (the held-out fold)")
        if self.val_dir is not None:
            raise UserError(
                "--val cannot be combined with --folds: the held-out fold is the validation set"
            )
