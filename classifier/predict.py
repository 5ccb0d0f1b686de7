"""Inference: load a checkpoint once, classify batches of images consistently.

The two heads are combined by joint scoring. For every sub category s with main category
m(s): score(s) = P_main(m(s)) * P_sub(s), renormalised over all sub categories. The
reported sub category is the best joint score, the reported main category is the one it
belongs to, so the pair is always consistent. Its confidences are the joint probability of
the sub category and the summed joint probability of all subs of that main category.

A checkpoint may carry a temperature fitted after training (``classifier.calibration``):
the joint's log scores are divided by it before the softmax, which makes the confidences
honest without changing any decision.
"""

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from classifier.checkpoint import Checkpoint, load_checkpoint
from classifier.int8 import int8_network, passes
from classifier.network import DualHeadNet, build_network
from classifier.presets import EvalPreset, normalize
from classifier.runtime import (
    INSTALL_HINT,
    OPENVINO,
    TORCH,
    OpenVINONet,
    load_openvino,
    openvino_installed,
    torch_on_calling_thread,
)
from refund_sorter.config import PRECISIONS, RUNTIMES, get_settings
from refund_sorter.errors import UserError
from refund_sorter.taxonomy import Taxonomy


@dataclass(frozen=True)
class Classification:
    """What the model says about one image; the sweep stores it in a ``models.Prediction`` row."""

    main: str
    main_confidence: float
    sub: str
    sub_confidence: float
    needs_review: bool  # sub confidence below the classifier's review threshold
    # The best sub categories by joint probability, best first: (main, sub, probability).
    # The first is the decision itself; the others are what a reviewer is offered next.
    top_subs: tuple[tuple[str, str, float], ...] = ()


# How many of the best sub categories each Classification carries.
TOP_SUBS = 3


def joint_log_scores(
    main_logits: torch.Tensor, sub_logits: torch.Tensor, sub_to_main: torch.Tensor
) -> torch.Tensor:
    """(B, n_sub) log P_main(m(s)) + log P_sub(s): the joint's log, up to a constant per row."""
    return main_logits.float().log_softmax(1)[:, sub_to_main] + sub_logits.float().log_softmax(1)


def joint_probabilities(
    main_logits: torch.Tensor,
    sub_logits: torch.Tensor,
    sub_to_main: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(B, n_sub) probabilities of each sub category, consistent with the main head, with the
    joint's log scores divided by ``temperature``."""
    return (joint_log_scores(main_logits, sub_logits, sub_to_main) / temperature).softmax(1)


def decide(joint: torch.Tensor, sub_to_main: torch.Tensor, n_main: int):
    """Return (sub index, sub confidence, main index, main confidence), each of shape (B,)."""
    sub_conf, sub_idx = joint.max(1)
    main_probs = torch.zeros(joint.shape[0], n_main, device=joint.device)
    main_probs.index_add_(1, sub_to_main, joint)
    main_idx = sub_to_main[sub_idx]
    main_conf = main_probs.gather(1, main_idx[:, None]).squeeze(1)
    return sub_idx, sub_conf, main_idx, main_conf


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU here")
    return torch.device(device)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, through oneDNN).
    Without it bf16 is emulated: on an AVX2-only AMD EPYC the forward pass ran 6 times
    slower in bf16 than in fp32 (13.7 against 86 images/s)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device, int8: dict | None = None) -> str:
    """``auto``: fp16 on CUDA; on CPU int8 when the model's int8 calibration (``int8``)
    passed the agreement rule, else bf16 where it is native (about 2x fp32 with
    channels_last there), else fp32."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 runs on CUDA only; use int8, bf16 or fp32 on a CPU")
    if precision == "int8" and device.type != "cpu":
        raise UserError("precision int8 runs on CPU only; use fp16 or bf16 on a GPU")
    if precision == "int8" and not int8:
        raise UserError(
            "this model has no int8 calibration; make one with: refund-sorter quantize "
            "MODEL TRAINING_DIR --out MODEL_INT8"
        )
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    if passes(int8):
        return "int8"
    return "bf16" if native_bf16() else "fp32"


def resolve_runtime(
    runtime: str, precision: str, device: torch.device, checkpoint: Checkpoint
) -> tuple[str, str]:
    """The (runtime, precision) a model runs in. On a CPU, ``auto`` takes the fastest that
    passes, in the order measured on both CPU kinds (docs/performance.md, "Runtimes"):
    OpenVINO int8, PyTorch int8, then OpenVINO in bf16 where native, else fp32; without
    OpenVINO installed, PyTorch as ``resolve_precision`` says. A GPU runs PyTorch."""
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if device.type != "cpu":
        if runtime == OPENVINO:
            raise UserError("runtime openvino runs on a CPU only; a GPU worker runs torch")
        return TORCH, resolve_precision(precision, device, checkpoint.int8)
    if runtime == TORCH or (runtime == "auto" and not openvino_installed()):
        return TORCH, resolve_precision(precision, device, checkpoint.int8)
    if runtime == OPENVINO and not openvino_installed():
        raise UserError(
            f"runtime openvino was asked for, but OpenVINO is not installed: {INSTALL_HINT}"
        )
    if precision == "fp16":
        resolve_precision(precision, device)  # the plain error: fp16 is CUDA's
    ov_int8 = checkpoint.openvino_int8
    if precision == "int8" and not ov_int8:
        if runtime == "auto":  # PyTorch's, or the plain error that there is none
            return TORCH, resolve_precision(precision, device, checkpoint.int8)
        raise UserError(
            "this model has no OpenVINO int8 network; make one with: refund-sorter quantize "
            "MODEL TRAINING_DIR --out MODEL_INT8 (with OpenVINO installed)"
        )
    if precision == "auto":
        if passes(ov_int8):
            return OPENVINO, "int8"
        if runtime == "auto" and passes(checkpoint.int8):
            return TORCH, "int8"
        return OPENVINO, "bf16" if native_bf16() else "fp32"
    return OPENVINO, precision


def autocast(device: torch.device, precision: str = "auto"):
    """The mixed-precision context for ``precision`` on ``device`` (nothing for fp32, nor
    for int8, whose network holds its own types)."""
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.inference_mode()
def forward_logits(
    net: DualHeadNet,
    batch: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    precision: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images prepared by ``EvalPreset`` -> both heads' logits (float32, on ``device``).
    ``net`` must be in eval mode."""
    if isinstance(net, OpenVINONet):  # it normalises inside
        return net(batch)
    if device.type == "cuda":  # copied from page-locked memory while the CPU goes on
        batch = batch.pin_memory().to(device, non_blocking=True)
    x = normalize(batch.to(device), mean, std, channels_last=True)
    with autocast(device, precision):
        main_logits, sub_logits = net(x)
    return main_logits.float(), sub_logits.float()


class Decision(NamedTuple):
    """A batch's decisions, each of shape (B,), and the joint probabilities behind them."""

    sub: torch.Tensor  # sub category index
    sub_confidence: torch.Tensor
    main: torch.Tensor  # main category index
    main_confidence: torch.Tensor
    joint: torch.Tensor  # (B, n_sub): the runners-up come from here


@torch.inference_mode()
def forward_decide(
    net: DualHeadNet,
    batch: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    sub_to_main: torch.Tensor,
    n_main: int,
    device: torch.device,
    precision: str = "auto",
    temperature: float = 1.0,
) -> Decision:
    """uint8 images prepared by ``EvalPreset`` -> their ``Decision``. ``net`` must be in
    eval mode.

    Inference (``Classifier.predict_tensors``), training's validation and the int8 check all
    decide through here, so the accuracy measured while training is the accuracy the
    workers get.
    """
    # Around an OpenVINO network PyTorch only decides, on one thread (its idle threads would
    # spin on OpenVINO's cores).
    around = torch_on_calling_thread if isinstance(net, OpenVINONet) else contextlib.nullcontext
    with around():
        joint = forward_joint(net, batch, mean, std, sub_to_main, device, precision, temperature)
        return Decision(*decide(joint, sub_to_main, n_main), joint)


@torch.inference_mode()
def forward_joint(
    net: DualHeadNet,
    batch: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    sub_to_main: torch.Tensor,
    device: torch.device,
    precision: str = "auto",
    temperature: float = 1.0,
) -> torch.Tensor:
    """The forward pass behind ``forward_decide``: (B, n_sub) joint probabilities."""
    main_logits, sub_logits = forward_logits(net, batch, mean, std, device, precision)
    return joint_probabilities(main_logits, sub_logits, sub_to_main, temperature)


class Classifier:
    """A loaded model, ready for batches. Build it once per process."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        device: str = "auto",
        precision: str = "auto",
        review_threshold: float | None = None,
        runtime: str | None = None,
        store: Path | None = None,
    ) -> None:
        """``runtime``: ``auto``, ``torch`` or ``openvino``; None takes the one this process
        is configured with (REFUND_SORTER_RUNTIME). ``store``: where the OpenVINO network is
        kept between starts (the model store); None converts it in memory."""
        if runtime is None:
            runtime = get_settings().runtime
        self.checkpoint = checkpoint
        self.taxonomy: Taxonomy = checkpoint.taxonomy
        self.version = checkpoint.version
        self.device = resolve_device(device)
        self.runtime, self.precision = resolve_runtime(runtime, precision, self.device, checkpoint)
        self.preset = EvalPreset(checkpoint.image_size, checkpoint.resize)
        if self.runtime == OPENVINO:
            self.net = load_openvino(checkpoint, self.precision, torch.get_num_threads(), store)
        elif self.precision == "int8":
            net = build_network(checkpoint).eval()
            self.net = int8_network(net, checkpoint.int8["ranges"], checkpoint.image_size)
        else:
            net = build_network(checkpoint).eval().to(self.device)
            self.net = net.to(memory_format=torch.channels_last)
        self.sub_to_main = torch.tensor(self.taxonomy.sub_to_main, device=self.device)
        self.temperature = checkpoint.temperature
        # The sub confidence below which a prediction needs review, unless predict_tensors is
        # given the one in force for its batch (refund_sorter.review_threshold):
        # ``review_threshold`` when given, else the threshold chosen for this model when it
        # was trained. Each Classification says whether it is below.
        self.review_threshold: float = (
            checkpoint.review_threshold if review_threshold is None else review_threshold
        )

    @classmethod
    def from_path(
        cls,
        path: Path,
        device: str = "auto",
        precision: str = "auto",
        review_threshold: float | None = None,
        runtime: str | None = None,
        store: Path | None = None,
    ) -> "Classifier":
        return cls(load_checkpoint(path), device, precision, review_threshold, runtime, store)

    def logits(
        self, images: torch.Tensor, batch_size: int = 64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads' logits for uint8 images prepared by ``self.preset``, in batches of
        ``batch_size``, on the CPU."""
        main, sub = [], []
        for start in range(0, len(images), batch_size):
            m, s = forward_logits(
                self.net,
                images[start : start + batch_size],
                self.checkpoint.mean,
                self.checkpoint.std,
                self.device,
                self.precision,
            )
            main.append(m.cpu())
            sub.append(s.cpu())
        if not main:
            return torch.empty(0, len(self.taxonomy.main)), torch.empty(0, len(self.taxonomy.sub))
        return torch.cat(main), torch.cat(sub)

    def predict_tensors(
        self, batch: torch.Tensor | list[torch.Tensor], review_threshold: float | None = None
    ) -> list[Classification]:
        """Classify uint8 images already prepared by ``self.preset`` (a batch or a list),
        flagging those below ``review_threshold`` (default: ``self.review_threshold``)."""
        threshold = self.review_threshold if review_threshold is None else review_threshold
        if isinstance(batch, list):
            batch = torch.stack(batch)
        decided = forward_decide(
            self.net,
            batch,
            self.checkpoint.mean,
            self.checkpoint.std,
            self.sub_to_main,
            len(self.taxonomy.main),
            self.device,
            self.precision,
            self.temperature,
        )
        joint = decided.joint
        top_p, top_idx = joint.topk(min(TOP_SUBS, joint.shape[1]), dim=1)
        return [
            Classification(
                self.taxonomy.main[m],
                float(mc),
                self.taxonomy.sub[s],
                float(sc),
                sc < threshold,
                tuple(self._named(i, p) for i, p in zip(ti, tp, strict=True)),
            )
            for s, sc, m, mc, ti, tp in zip(
                decided.sub.tolist(),
                decided.sub_confidence.tolist(),
                decided.main.tolist(),
                decided.main_confidence.tolist(),
                top_idx.tolist(),
                top_p.tolist(),
                strict=True,
            )
        ]

    def _named(self, sub_index: int, p: float) -> tuple[str, str, float]:
        tax = self.taxonomy
        return tax.main[tax.sub_to_main[sub_index]], tax.sub[sub_index], float(p)

    def predict_images(self, images: list[Image.Image]) -> list[Classification]:
        if not images:
            return []
        return self.predict_tensors([self.preset(img) for img in images])
