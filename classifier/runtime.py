"""Which engine runs a model's forward pass on a CPU: PyTorch, or OpenVINO (Intel's
inference runtime, ``pip install '.[openvino]'``), and the OpenVINO network itself.

On the same checkpoint, OpenVINO runs the forward pass faster than PyTorch eager on both
CPU kinds we run on (docs/performance.md, "Runtimes"): a CPU worker picks it by itself
(``REFUND_SORTER_RUNTIME=auto``) when it is installed, in the precision that is fastest and
passes, and PyTorch otherwise. A GPU worker keeps PyTorch (fp16).

- fp32 and bf16: the checkpoint's network converted (``ov.convert_model``), which needs no
  photo, so it is converted wherever it is missing.
- int8: quantized by NNCF on calibration photos, where photos are at hand
  (``refund-sorter quantize``, ``classifier.quantize``), and checked there against PyTorch
  fp32 by the same 99% agreement rule as PyTorch's int8. The checked network itself (its
  IR: the XML and the weights) is stored in the checkpoint, so what serves is what was
  checked, and no worker ever needs a photo or NNCF.

Both take uint8 images and normalise them inside the network (a preprocessing step folded
into it), and return the main and the sub head's logits, addressed by position.

Converting costs seconds, so a worker keeps the result in the model store beside the model
file (``REFUND_SORTER_MODEL_STORE``), one file per model version, OpenVINO version and
precision, written atomically (several workers may start at once); a file that is missing
or damaged (its zip's checksums, or OpenVINO refusing it) is made again from the checkpoint.
"""

import contextlib
import logging
import os
import re
import tempfile
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from classifier.checkpoint import Checkpoint
from classifier.network import build_network
from refund_sorter.atomic import atomic_write
from refund_sorter.errors import UserError

log = logging.getLogger(__name__)

# The runtimes' names (refund_sorter.config.RUNTIMES, but for auto).
OPENVINO, TORCH = "openvino", "torch"
INSTALL_HINT = "install it with: pip install 'refund-sorter[openvino]'"


class RuntimeUnavailable(UserError):
    pass


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def openvino_version() -> str:
    """OpenVINO's release, as the store's file names carry it (``2026.4.1``)."""
    import openvino

    return re.match(r"[0-9.]+", openvino.__version__).group(0).rstrip(".")


class OpenVINONet:
    """A compiled OpenVINO network, called like the PyTorch one but on uint8 images prepared
    by ``EvalPreset`` (it normalises them itself): (main logits, sub logits) as float32
    tensors."""

    def __init__(self, model, precision: str, threads: int) -> None:
        import openvino as ov

        # One stream of ``threads`` threads, unpinned: a worker's pool processes each run
        # their own network on their share of the cores, as PyTorch's threads do. The
        # arithmetic is the one named: OpenVINO would otherwise run fp32 in bf16 where the
        # CPU has it.
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        # An inference request per calling thread: one request runs one batch at a time
        # ("Infer Request is busy"), and the threads pool classifies two batches at once
        # on the one network its process loaded.
        self._requests = threading.local()

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        # The batch is read in place, as CompiledModel's own call does; the outputs are
        # copied, since the request's next batch overwrites them.
        out = request.infer(batch.contiguous().numpy(), share_inputs=True)
        return torch.from_numpy(out[0]), torch.from_numpy(out[1])


@contextlib.contextmanager
def torch_on_calling_thread():
    """PyTorch's operations on the calling thread alone while it lasts, for the work around
    an OpenVINO network: the joint decision on a few numbers per photo. PyTorch's idle
    OpenMP threads spin for a while after each parallel operation, however small, on the
    cores OpenVINO's own threads compute on: on a 2-core Intel Xeon the model ran at 1,780
    images/s with them, 2,010 without (docs/performance.md, "Runtimes"). OpenMP keeps a
    thread count per thread, so threads already computing keep theirs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------- building


def convert(ckpt: Checkpoint):
    """The checkpoint's float network as an OpenVINO model taking uint8 images of any batch
    size, normalised inside with the checkpoint's mean and std."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    size = ckpt.image_size
    net = build_network(ckpt).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace announcing its deprecation
        model = ov.convert_model(
            net, example_input=torch.zeros(1, 3, size, size), input=[(-1, 3, size, size)]
        )
    steps = PrePostProcessor(model)
    steps.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NCHW"))
    steps.input().model().set_layout(ov.Layout("NCHW"))
    steps.input().preprocess().convert_element_type(ov.Type.f32).mean(
        [255 * m for m in ckpt.mean]
    ).scale([255 * s for s in ckpt.std])
    return steps.build()


def serialize(model) -> tuple[bytes, bytes]:
    """An OpenVINO model as its IR: the XML and the weights, in full precision."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="refund-sorter-openvino-") as tmp:
        ov.save_model(model, os.path.join(tmp, "model.xml"), compress_to_fp16=False)
        return Path(tmp, "model.xml").read_bytes(), Path(tmp, "model.bin").read_bytes()


def deserialize(xml: bytes, weights: bytes):
    import openvino as ov

    return ov.Core().read_model(
        model=xml, weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy())
    )


def int8_ir(ckpt: Checkpoint) -> tuple[bytes, bytes]:
    """The checked int8 network the checkpoint carries."""
    entry = ckpt.openvino_int8
    return entry["xml"].encode(), entry["weights"].numpy().tobytes()


def _made(ckpt: Checkpoint, precision: str) -> tuple[bytes, bytes]:
    return int8_ir(ckpt) if precision == "int8" else serialize(convert(ckpt))


# ------------------------------------------------------------------------- the store


def store_file(store: Path, version: str, precision: str) -> Path:
    """Where the store keeps model ``version``'s OpenVINO network in ``precision`` for the
    OpenVINO release installed here (fp32 and bf16 share one: the arithmetic is chosen when
    it is compiled)."""
    kind = "int8" if precision == "int8" else "float"
    return Path(store) / f"{version}.openvino-{openvino_version()}.{kind}.zip"


def _read(path: Path) -> tuple[bytes, bytes]:
    with zipfile.ZipFile(path) as archive:  # reading checks each member's CRC
        return archive.read("model.xml"), archive.read("model.bin")


def _write(path: Path, xml: bytes, weights: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as out:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("model.xml", xml)
            archive.writestr("model.bin", weights)
        out.flush()
        os.fchmod(out.fileno(), 0o644)  # readable by the other roles' users


def load_openvino(
    ckpt: Checkpoint, precision: str, threads: int, store: Path | None = None
) -> OpenVINONet:
    """Model ``ckpt`` in OpenVINO, compiled for ``threads`` threads: from the store's file
    when it holds a sound one, else made from the checkpoint (and the store's file written
    again, when there is a store). A store that cannot be written is only logged."""
    path = store_file(store, ckpt.version, precision) if store and ckpt.version else None
    if path is not None and path.is_file():
        try:
            return OpenVINONet(deserialize(*_read(path)), precision, threads)
        except Exception as exc:  # a damaged file: zipfile's and OpenVINO's errors alike
            log.warning("the model store's %s is damaged (%s); making it again", path, exc)
    xml, weights = _made(ckpt, precision)
    net = OpenVINONet(deserialize(xml, weights), precision, threads)
    if path is not None:
        try:
            _write(path, xml, weights)
        except OSError as exc:
            log.warning("cannot keep the OpenVINO network in the model store (%s): %s", path, exc)
    return net
