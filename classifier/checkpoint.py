"""Checkpoints: one file with everything inference needs, loadable without running code.

Saved with ``torch.save`` as plain data (tensors, dicts, lists, strings, numbers) and
loaded with ``torch.load(..., weights_only=True)``, which refuses any pickled object that
could execute code. Float weights are stored as float16 to halve the file.

Format 2 adds the calibration: the temperature applied to the joint's log scores and the
review threshold chosen on held-out photos. Format 1 files (written before) load with
temperature 1 and the threshold workers used then; a reader of format 1 refuses format 2
files, rather than classifying with their confidences uncalibrated.

Format 3 adds the other backbones (EfficientNet-Lite: ``arch`` names it, and the mean and
std are its own) and the resize rule (``classifier.presets.RESIZE_RULES``). Every file of
format 1 and 2 holds a ResNet18 whose photos are squashed, and loads as one; a reader of
format 2 refuses format 3 files, whose network it may not be able to build.
"""

import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from classifier.presets import SQUASH
from refund_sorter.atomic import atomic_write
from refund_sorter.errors import UserError
from refund_sorter.taxonomy import Taxonomy
from registry.checkpoint_taxonomy import FORMAT, READABLE_FORMATS
from registry.version import model_version

# The review threshold of a model that did not choose its own: the one every worker used
# before models carried theirs.
DEFAULT_REVIEW_THRESHOLD = 0.6


class CheckpointError(UserError):
    pass


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    taxonomy: Taxonomy
    arch: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict
    resize: str = SQUASH  # how a photo becomes the square input (classifier.presets)
    temperature: float = 1.0  # divides the joint's log scores; 1 = as trained
    review_threshold: float = DEFAULT_REVIEW_THRESHOLD  # sub confidence below it: review
    version: str = ""
    # Static int8 calibration (classifier.quantize): activation ranges, agreement with fp32.
    int8: dict | None = None
    # OpenVINO's int8 network, quantized by NNCF and checked (classifier.runtime): its IR
    # (XML text, weights as uint8), its agreement with fp32, the OpenVINO release that made it.
    openvino_int8: dict | None = None

    def to_payload(self) -> dict:
        # Without an OpenVINO network the payload is what it was before there could be one,
        # so a model saved again keeps its version.
        extra = {"openvino_int8": self.openvino_int8} if self.openvino_int8 else {}
        return {
            "format": FORMAT,
            "arch": self.arch,
            "state_dict": {
                k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.cpu()
                for k, v in self.state_dict.items()
            },
            "taxonomy": self.taxonomy.to_dict(),
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "meta": self.meta,
            "int8": self.int8,
            "calibration": {
                "temperature": float(self.temperature),
                "review_threshold": float(self.review_threshold),
            },
            **extra,
        }


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> str:
    """Write atomically (a reader never sees half a file) and return the model version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Through a file object: given a path, torch.save names the archive's inner folder after
    # the file, so the same model saved under two names would get two versions.
    with atomic_write(path, "wb") as fh:
        torch.save(checkpoint.to_payload(), fh)
    checkpoint.version = model_version(path)
    return checkpoint.version


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    # save_checkpoint always writes torch's zip format. Anything else (text, an empty file)
    # would otherwise fail inside the unpickler and be misreported as unsafe code.
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a refund-sorter checkpoint (not a PyTorch file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).splitlines()
        detail = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "")
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects that could run code, not only "
            f"plain data ({detail.strip()[:200]})"
        ) from None
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") not in READABLE_FORMATS:
        found = payload.get("format") if isinstance(payload, dict) else None
        if isinstance(found, str) and found.startswith("refund-sorter-checkpoint/"):
            raise CheckpointError(
                f"{path} is a {found} file, written by a newer refund-sorter; this one reads "
                f"{' and '.join(READABLE_FORMATS)}"
            )
        raise CheckpointError(f"{path} is not a refund-sorter checkpoint (format {FORMAT})")
    temperature, review_threshold = _calibration(path, payload.get("calibration", {}))
    return Checkpoint(
        state_dict=payload["state_dict"],
        taxonomy=Taxonomy.from_dict(payload["taxonomy"]),
        arch=payload["arch"],
        image_size=int(payload["image_size"]),
        mean=tuple(payload["mean"]),
        std=tuple(payload["std"]),
        meta=payload["meta"],
        resize=payload.get("resize", SQUASH),
        temperature=temperature,
        review_threshold=review_threshold,
        version=model_version(path),
        int8=payload.get("int8"),
        openvino_int8=payload.get("openvino_int8"),
    )


def _calibration(path: Path, calibration) -> tuple[float, float]:
    if not isinstance(calibration, dict):
        raise CheckpointError(f"{path} holds an unusable calibration: {calibration!r}")
    temperature = calibration.get("temperature", 1.0)
    threshold = calibration.get("review_threshold", DEFAULT_REVIEW_THRESHOLD)
    if not (
        isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0
    ):
        raise CheckpointError(f"{path} holds an unusable temperature: {temperature!r}")
    if not (isinstance(threshold, int | float) and 0 <= threshold <= 1):
        raise CheckpointError(f"{path} holds an unusable review threshold: {threshold!r}")
    return float(temperature), float(threshold)
