"""Untrained checkpoints for tests: everything a real model file has, except accuracy."""

from pathlib import Path

from refund_sorter.taxonomy import Taxonomy

# The test models' recipe: a ResNet18 from scratch, the whole network learning, so that a
# test trains in seconds at 32 px and needs no weight package (the shipped recipe's defaults
# fine-tune EfficientNet-Lite0 from its ImageNet weights).
SCRATCH = {
    "backbone": "resnet18",
    "pretrained": "none",
    "train_stages": 0,
    "backbone_lr_scale": 1.0,
}
SCRATCH_OPTIONS = [f"--{k.replace('_', '-')}={v}" for k, v in SCRATCH.items()]


def save_random_model(
    path: Path,
    taxonomy: Taxonomy,
    seed: int = 0,
    image_size: int = 32,
    note: str = "random weights for tests",
    arch: str = "resnet18",
    pretrained: str = "none",
    **calibration,
) -> str:
    """Write a checkpoint of backbone ``arch`` with random weights for ``taxonomy`` (but the
    backbone's, with ``pretrained``: ``imagenet`` gives its features meaning); return its
    model version. ``calibration``: ``temperature`` and ``review_threshold`` to store, else
    the defaults."""
    import torch

    from classifier.checkpoint import Checkpoint, save_checkpoint
    from classifier.network import DualHeadNet, backbone
    from classifier.pretrained import load_backbone_weights

    torch.manual_seed(seed)
    net = DualHeadNet(len(taxonomy.main), len(taxonomy.sub), arch=arch, image_size=image_size)
    load_backbone_weights(net, pretrained)
    spec = backbone(arch)
    checkpoint = Checkpoint(
        state_dict=net.state_dict(),
        taxonomy=taxonomy,
        arch=arch,
        image_size=image_size,
        mean=spec.mean,
        std=spec.std,
        meta={"note": note},
        **calibration,
    )
    return save_checkpoint(checkpoint, path)


def save_scaled_model(source: Path, path: Path, factor: float, **calibration) -> str:
    """Copy the checkpoint ``source`` to ``path`` with every logit ``factor`` times as large
    (both heads are linear) and ``calibration`` (``temperature``, ``review_threshold``) set;
    return the copy's model version."""
    from classifier.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(source)
    for head in ("main_head", "sub_head"):
        for part in ("weight", "bias"):
            key = f"{head}.{part}"
            checkpoint.state_dict[key] = checkpoint.state_dict[key].float() * factor
    for name, value in calibration.items():
        setattr(checkpoint, name, value)
    return save_checkpoint(checkpoint, path)
