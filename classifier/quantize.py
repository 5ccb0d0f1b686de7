"""Making a model's static int8 calibration (``refund-sorter quantize``, and ``train
--int8``), for both runtimes (``classifier.runtime``).

PyTorch: calibration runs the float network once over a sample of training photos and
chooses the range of every activation. Those ranges (plain tensors) are stored in the
checkpoint, so a worker rebuilds the same int8 network at start without any photo
(``classifier.int8``). OpenVINO, where it and NNCF are installed: NNCF quantizes the
converted network on the same photos, and the checkpoint stores the int8 network itself.
The same call measures, for each, how often the int8 network reports the same main and sub
category as PyTorch fp32 on other photos; ``auto`` precision picks an int8 network only when
that agreement passes ``classifier.int8.AGREEMENT_RULE`` on both levels.
"""

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from classifier.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from classifier.data import load_images
from classifier.int8 import int8_network, passes, with_observers
from classifier.network import build_network
from classifier.predict import forward_decide
from classifier.presets import EvalPreset
from classifier.runtime import (
    OpenVINONet,
    convert,
    deserialize,
    openvino_version,
    serialize,
)
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
) -> tuple[dict, dict | None]:
    """Calibrate int8 on ``photos`` of ``files`` and measure its agreement with fp32 on up
    to ``check`` others (half and half when there are fewer), in PyTorch and, where OpenVINO
    and NNCF are installed, in OpenVINO; returns the checkpoint's ``int8`` and
    ``openvino_int8`` entries (the latter None without OpenVINO)."""
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
    preset = EvalPreset(ckpt.image_size, ckpt.resize)
    net = net.eval()
    calib_images = load_images([(p, 0) for p in calib], preset, ckpt.image_size, "calibrating")
    held_images = load_images([(p, 0) for p in held], preset, ckpt.image_size, "checking")
    calib_images, held_images = calib_images.images, held_images.images
    fp32 = _decided(net, held_images, ckpt)

    observed = with_observers(net, ckpt.image_size)
    _decided(observed, calib_images, ckpt)
    ranges = _ranges(observed)
    int8 = _decided(int8_network(net, ranges, ckpt.image_size), held_images, ckpt)
    photo_counts = {"calibration": len(calib_images), "agreement": len(held_images)}
    torch_int8 = {
        "ranges": ranges,
        "agreement": _agreement(fp32, int8, "PyTorch", photo_counts, echo),
        "photos": photo_counts,
    }
    return torch_int8, _openvino_int8(ckpt, calib_images, held_images, fp32, photo_counts, echo)


def _agreement(fp32, int8, runtime: str, photos: dict, echo) -> dict[str, float]:
    agreement = {
        level: float((a == b).float().mean())
        for level, a, b in zip(("main", "sub"), fp32, int8, strict=True)
    }
    echo(
        f"{runtime} int8 calibrated on {photos['calibration']} photos; top-1 agreement with "
        f"fp32 on {photos['agreement']} others: main {agreement['main']:.4f}, "
        f"sub {agreement['sub']:.4f}"
    )
    return agreement


def _openvino_int8(ckpt, calib_images, held_images, fp32, photo_counts, echo) -> dict | None:
    """OpenVINO's int8 network, quantized by NNCF's defaults on the calibration photos
    (one at a time, as NNCF's statistics expect), then serialised and read back, so the
    network checked is byte for byte the one a worker loads."""
    try:
        import nncf
    except ImportError:
        echo(
            "OpenVINO int8 not made: NNCF is not installed "
            "(install it with: pip install 'refund-sorter[train]')"
        )
        return None
    # NNCF's own logger only: nncf.set_log_level also sets the level of every handler that
    # logger holds, which may be shared with the process's other loggers.
    logging.getLogger("nncf").setLevel(logging.ERROR)
    dataset = nncf.Dataset([calib_images[i : i + 1].numpy() for i in range(len(calib_images))])
    quantized = nncf.quantize(convert(ckpt), dataset, subset_size=len(calib_images))
    xml, weights = serialize(quantized)
    net = OpenVINONet(deserialize(xml, weights), "int8", torch.get_num_threads())
    int8 = _decided(net, held_images, ckpt)
    return {
        "xml": xml.decode(),
        "weights": torch.frombuffer(bytearray(weights), dtype=torch.uint8),
        "agreement": _agreement(fp32, int8, "OpenVINO", photo_counts, echo),
        "photos": photo_counts,
        "runtime": openvino_version(),
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
        ckpt.int8, ckpt.openvino_int8 = calibrate(
            ckpt, build_network(ckpt), files, photos, check, seed, echo
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    version = save_checkpoint(ckpt, out)
    float_ = "fp32 or bf16 (int8 agreed on fewer than 99%)"
    torch_verdict = "PyTorch int8" if passes(ckpt.int8) else float_
    verdict = (
        f"picks OpenVINO int8 where OpenVINO is installed, else {torch_verdict}"
        if passes(ckpt.openvino_int8)
        else f"picks {torch_verdict}"
    )
    echo(f"saved {out} (version {version}); automatic precision on a CPU {verdict}")
    return version
