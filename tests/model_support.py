"""Untrained checkpoints for tests: everything a real model file has, except accuracy."""

from pathlib import Path

from classifier.taxonomy import Taxonomy


def save_random_model(
    path: Path,
    taxonomy: Taxonomy,
    seed: int = 0,
    image_size: int = 32,
    note: str = "random weights for tests",
) -> str:
    """Write a checkpoint with random weights for ``taxonomy``; return its model version."""
    import torch

    from classifier.checkpoint import Checkpoint, save_checkpoint
    from classifier.network import ARCH, IMAGENET_MEAN, IMAGENET_STD, DualHeadNet

    torch.manual_seed(seed)
    net = DualHeadNet(len(taxonomy.main), len(taxonomy.sub))
    checkpoint = Checkpoint(
        state_dict=net.state_dict(),
        taxonomy=taxonomy,
        arch=ARCH,
        image_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        meta={"note": note},
    )
    return save_checkpoint(checkpoint, path)
