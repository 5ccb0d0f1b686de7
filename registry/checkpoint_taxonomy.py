"""A checkpoint's taxonomy and evaluation figures, read without PyTorch: the review desk
offers the model's categories and must start without it, and the model registry records
what a checkpoint says of itself in processes that never load it. Torch-free.

A checkpoint is torch's zip format: ``<name>/data.pkl`` pickles the payload and refers to
the tensors' bytes, stored beside it. This unpickler builds the plain data (dicts, lists,
strings, numbers) and puts ``None`` where a tensor stands; it loads no class or function
but harmless stand-ins for torch's own, so a file can never run code here either.
"""

import json
import pickle
import zipfile
from pathlib import Path

from refund_sorter.errors import UserError
from refund_sorter.taxonomy import Taxonomy

# The format checkpoints are written in, and those that still load (classifier.checkpoint
# reads them from here). Format 1 had no calibration: temperature 1, the old threshold.
# Format 2 knew ResNet18 alone; format 3 names any backbone and the resize rule.
FORMAT = "refund-sorter-checkpoint/3"
READABLE_FORMATS = ("refund-sorter-checkpoint/1", "refund-sorter-checkpoint/2", FORMAT)


def _stand_in(*_args, **_kwargs) -> None:
    return None


class _PlainData(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch" or module.startswith("torch."):
            return _stand_in  # tensor rebuilders and storage types: the weights are not needed
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")

    def persistent_load(self, pid) -> None:
        return None  # a tensor's storage, left unread


# What a payload of the wrong shape raises on the way to its taxonomy.
_NOT_A_PAYLOAD = (ValueError, KeyError, TypeError, AttributeError, IndexError)


def read_payload(path: Path) -> dict:
    """The checkpoint's payload at ``path`` as plain data, ``None`` for each tensor;
    UserError, saying why, if it is not a readable refund-sorter checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path} (set REFUND_SORTER_MODEL_PATH)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(names) != 1:
                raise ValueError("not a PyTorch file")
            payload = _PlainData(archive.open(names[0])).load()
        if not isinstance(payload, dict) or payload.get("format") not in READABLE_FORMATS:
            raise ValueError(f"not format {' or '.join(READABLE_FORMATS)}")
        Taxonomy.from_dict(payload["taxonomy"])
        return payload
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, *_NOT_A_PAYLOAD) as exc:
        raise UserError(f"{path} is not a readable refund-sorter checkpoint: {exc}") from None


def read_taxonomy(path: Path) -> Taxonomy:
    """The taxonomy of the checkpoint at ``path``; UserError, saying why, if it has none."""
    return Taxonomy.from_dict(read_payload(path)["taxonomy"])


# Training metadata that is not a figure: every epoch's history, every recipe argument.
# Left out: the epoch history, the recipe's arguments, and the hash of every photo the model
# saw (thousands; ``model compare`` reads them from the file itself).
_NOT_FIGURES = ("history", "args", "content_hashes")


def checkpoint_figures(payload: dict) -> dict:
    """What a checkpoint says of itself, as plain JSON: its training metadata (validation
    accuracy and where it was measured, photo counts, calibration) but the epoch history and
    the recipe's arguments, its temperature and review threshold, and its int8 networks'
    agreement with fp32 (PyTorch's, OpenVINO's) when it was calibrated for int8."""
    meta = payload.get("meta") if isinstance(payload.get("meta"), dict) else {}
    figures = {k: v for k, v in meta.items() if k not in _NOT_FIGURES}
    calibration = payload.get("calibration")
    if isinstance(calibration, dict):
        figures.update(
            {k: calibration[k] for k in ("temperature", "review_threshold") if k in calibration}
        )
    for key in ("int8", "openvino_int8"):
        int8 = payload.get(key)
        if isinstance(int8, dict) and "agreement" in int8:
            figures[f"{key}_agreement"] = int8["agreement"]
    # Plain JSON all through: a value JSON cannot hold is kept as its text.
    return json.loads(json.dumps(figures, default=str))
