"""Making a model's static int8 calibration (``refund-sorter quantize``, and ``train
--int8``).

Calibration runs the float network once over a sample of training photos and chooses the
range of every activation. Those ranges (plain tensors) are stored in the checkpoint, so a
worker rebuilds the same int8 network at start without any photo (``classifier.int8``). The
same call measures how often the int8 network reports the same main and sub category as fp32
on other photos; ``auto`` precision picks int8 only when that agreement passes
``classifier.int8.AGREEMENT_RULE`` on both levels.
"""

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from classifier.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from classifier.data import load_images
from classifier.int8 import int8_network, passes, with_observers
from classifier.predict import build_network, forward_decide
from classifier.presets import EvalPreset
from refund_sorter.errors import UserError
from refund_sorter.taxonomy import read_layout


def _ranges(observed: nn.Module) -> dict[str, torch.Tensor]:
    """Each activation's range as chosen by its histogram observer, stored as the state of
    a min-max observer: the same int8 network, built in a fraction of a second at load
    instead of searching every histogram again in every worker process."""
    from torch.ao.quantization.observer import HistogramObserver

    ranges = {}
    for name, module in observed.named_modules(remove_duplicate=False):  # shared ones too
        if isinstance(module, HistogramObserver):
            # The search HistogramObserver.calculate_qparams runs before it derives the scale.
            low, high = module._non_linear_param_search()
            ranges[f"{name}.min_val"] = low.detach().clone()
            ranges[f"{name}.max_val"] = high.detach().clone()
    return ranges


def _decided(net: nn.Module, images: torch.Tensor, ckpt: Checkpoint, batch: int = 64):
    """The (main, sub) indices the classifier reports for uint8 ``images``."""
    sub_to_main = torch.tensor(ckpt.taxonomy.sub_to_main)
    mains, subs = [], []
    for i in range(0, len(images), batch):
        decided = forward_decide(
            net,
            images[i : i + batch],
            ckpt.mean,
            ckpt.std,
            sub_to_main,
            len(ckpt.taxonomy.main),
            torch.device("cpu"),
            "fp32",
        )
        mains.append(decided.main)
        subs.append(decided.sub)
    return torch.cat(mains), torch.cat(subs)


def calibrate(
    ckpt: Checkpoint,
    net: nn.Module,
    files: Sequence[Path],
    photos: int = 512,
    check: int = 512,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> dict:
    """Calibrate int8 on ``photos`` of ``files`` and measure its agreement with fp32 on up
    to ``check`` others (half and half when there are fewer); returns the checkpoint's
    ``int8`` entry."""
    files = list(files)
    random.Random(seed).shuffle(files)
    if len(files) < photos + check:  # a small folder: half to calibrate, half to check
        photos = len(files) // 2
    calib, held = files[:photos], files[photos : photos + check]
    if not calib or not held:
        raise ValueError(
            f"int8 calibration needs photos to calibrate on and others to check agreement "
            f"on; got {len(files)}"
        )
    preset = EvalPreset(ckpt.image_size)
    net = net.eval()
    observed = with_observers(net, ckpt.image_size)
    images = load_images([(p, 0) for p in calib], preset, ckpt.image_size, "calibrating").images
    _decided(observed, images, ckpt)
    ranges = _ranges(observed)

    images = load_images([(p, 0) for p in held], preset, ckpt.image_size, "checking").images
    fp32 = _decided(net, images, ckpt)
    int8 = _decided(int8_network(net, ranges, ckpt.image_size), images, ckpt)
    agreement = {
        level: float((a == b).float().mean())
        for level, a, b in zip(("main", "sub"), fp32, int8, strict=True)
    }
    echo(
        f"int8 calibrated on {len(calib)} photos; top-1 agreement with fp32 on "
        f"{len(images)} others: main {agreement['main']:.4f}, sub {agreement['sub']:.4f}"
    )
    return {
        "ranges": ranges,
        "agreement": agreement,
        "photos": {"calibration": len(calib), "agreement": len(images)},
    }


def add_int8(
    model: Path,
    data_dirs: Path | Sequence[Path],
    out: Path,
    mapping: Path | None = None,
    photos: int = 512,
    check: int = 512,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> str:
    """Calibrate the model file ``model`` for int8 on photos of ``data_dirs`` (one data folder
    or several; ``mapping``: the flat layout's JSON), save it with its calibration to ``out``
    and return its version."""
    ckpt = load_checkpoint(model)
    files = [path for path, _ in read_layout(data_dirs, mapping, min_subs=1).files]
    try:
        ckpt.int8 = calibrate(ckpt, build_network(ckpt), files, photos, check, seed, echo)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    version = save_checkpoint(ckpt, out)
    verdict = "picks int8" if passes(ckpt.int8) else "keeps fp32 or bf16 (below 99%)"
    echo(f"saved {out} (version {version}); automatic precision on a CPU {verdict}")
    return version
