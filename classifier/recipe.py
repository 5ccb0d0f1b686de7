"""The training recipe: every training setting and its default, in one place.

Torch-free on purpose: the CLI reads its option defaults from ``TrainConfig`` at startup,
and the commands that never train must not pay for importing PyTorch.
"""

from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainConfig:
    epochs: int = 60
    image_size: int = 128
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    device: str = "auto"
    pretrained: str = "none"  # "none", "imagenet" or a path to a weights file
    seed: int = 0
    val_dir: Path | None = None  # a separate validation folder; else a split of the data
    val_fraction: float = 0.1
    mapping: Path | None = None  # the flat layout's JSON {"<sub>": "<main>"}
