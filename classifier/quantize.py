"""Static int8 quantisation for CPU inference (PyTorch's x86 backend, FX graph mode).

Calibration runs the float network once over a sample of training photos and chooses the
range of every activation. Those ranges (plain tensors) are stored in the checkpoint, so a
worker rebuilds the same int8 network at start without any photo. The same call measures
how often the int8 network reports the same main and sub category as fp32 on other photos;
``auto`` precision picks int8 only when that agreement is at least ``AGREEMENT_RULE`` on
both levels.
"""

import copy
import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from classifier.checkpoint import Checkpoint
from classifier.data import load_images
from classifier.predict import forward_decide
from classifier.presets import EvalPreset

AGREEMENT_RULE = 0.99
OBSERVER = "activation_post_process"


def _prepared(net: nn.Module, image_size: int, observer=None) -> nn.Module:
    """``net`` with observers on every activation: the x86 backend's defaults, or
    ``observer`` in place of their activation observer."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = "x86"
    mapping = get_default_qconfig_mapping("x86")
    if observer is not None:
        mapping.set_global(QConfig(activation=observer, weight=mapping.global_qconfig.weight))
    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return prepare_fx(copy.deepcopy(net).eval(), mapping, (example,))


def _ranges(prepared: nn.Module) -> dict[str, torch.Tensor]:
    """Each activation's range as chosen by its histogram observer, stored as the state of
    a min-max observer: the same int8 network, built in a fraction of a second at load
    instead of searching every histogram again in every worker process."""
    from torch.ao.quantization.observer import HistogramObserver

    ranges = {}
    for name, module in prepared.named_modules(remove_duplicate=False):  # shared ones too
        if isinstance(module, HistogramObserver):
            # The search HistogramObserver.calculate_qparams runs before it derives the scale.
            low, high = module._non_linear_param_search()
            ranges[f"{name}.min_val"] = low.detach().clone()
            ranges[f"{name}.max_val"] = high.detach().clone()
    return ranges


def int8_network(net: nn.Module, ranges: dict[str, torch.Tensor], image_size: int):
    """The int8 version of the float ``net``, from stored activation ``ranges``."""
    from torch.ao.quantization.observer import MinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx

    prepared = _prepared(net, image_size, MinMaxObserver.with_args(reduce_range=True))
    expected = {
        k for k in prepared.state_dict() if OBSERVER in k and k.endswith(("min_val", "max_val"))
    }
    if set(ranges) != expected:
        raise ValueError(
            f"int8 calibration does not fit this network ({sorted(set(ranges) ^ expected)[:3]})"
        )
    prepared.load_state_dict(ranges, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared)


def _decided(net: nn.Module, images: torch.Tensor, ckpt: Checkpoint, batch: int = 64):
    """The (main, sub) indices the classifier reports for uint8 ``images``."""
    sub_to_main = torch.tensor(ckpt.taxonomy.sub_to_main)
    mains, subs = [], []
    for i in range(0, len(images), batch):
        sub, _, main, _ = forward_decide(
            net,
            images[i : i + batch],
            ckpt.mean,
            ckpt.std,
            sub_to_main,
            len(ckpt.taxonomy.main),
            torch.device("cpu"),
            "fp32",
        )
        mains.append(main)
        subs.append(sub)
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
    prepared = _prepared(net, ckpt.image_size)
    images = load_images([(p, 0) for p in calib], preset, ckpt.image_size, "calibrating").images
    _decided(prepared, images, ckpt)
    ranges = _ranges(prepared)

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


def passes(int8: dict | None) -> bool:
    """Whether a checkpoint's int8 calibration may be used by ``auto`` precision."""
    return bool(int8) and min(int8["agreement"].values()) >= AGREEMENT_RULE
