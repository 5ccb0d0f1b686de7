"""Running a model in int8 on a CPU (PyTorch's x86 backend, FX graph mode), from the
calibration its checkpoint carries: the int8 network rebuilt from the stored activation
ranges (``int8_network``), and whether ``auto`` precision may pick it (``passes``: when its
top-1 agreement with fp32 is at least ``AGREEMENT_RULE`` on both levels).

``classifier.quantize`` makes that calibration; ``classifier.predict`` runs it.
"""

import copy
import warnings

import torch
from torch import nn

AGREEMENT_RULE = 0.99
OBSERVER = "activation_post_process"


def with_observers(net: nn.Module, image_size: int, observer=None) -> nn.Module:
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


def int8_network(net: nn.Module, ranges: dict[str, torch.Tensor], image_size: int):
    """The int8 version of the float ``net``, from stored activation ``ranges``."""
    from torch.ao.quantization.observer import MinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx

    observed = with_observers(net, image_size, MinMaxObserver.with_args(reduce_range=True))
    expected = {
        k for k in observed.state_dict() if OBSERVER in k and k.endswith(("min_val", "max_val"))
    }
    if set(ranges) != expected:
        raise ValueError(
            f"int8 calibration does not fit this network ({sorted(set(ranges) ^ expected)[:3]})"
        )
    observed.load_state_dict(ranges, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(observed)


def passes(int8: dict | None) -> bool:
    """Whether a checkpoint's int8 calibration may be used by ``auto`` precision."""
    return bool(int8) and min(int8["agreement"].values()) >= AGREEMENT_RULE
