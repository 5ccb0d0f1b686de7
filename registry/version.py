"""A model's version, and which model a piece of work is for. Torch-free: the producer
needs it.

A model's version is derived from its file's bytes (``model_version``): every row, task and
registry entry names a model by it. Whether a task is work for a given model
(``is_for_model``) is asked here by a worker's batch. Which model serves, and where each
version's file is, is the model registry's answer (``registry.registry``).
"""

import os
from pathlib import Path

from refund_sorter.images import sha256_file

# Per model file (its absolute path): the file's identity when it was last hashed, and the
# version it had then. Hashing the 22 MB file takes a tenth of a second, and the registry asks
# for the version of the file at REFUND_SORTER_MODEL_PATH at every sweep.
_versions: dict[str, tuple[tuple[int, ...], str]] = {}


def model_version(path: Path) -> str:
    """The first 12 hex digits of the SHA-256 of the model file at ``path``. Hashed again
    only when the file's identity (device, inode, size, modification and change times)
    differs from the last time this path was asked: a replaced or rewritten file gets a new
    inode or new times, and so its new version."""
    key = os.path.abspath(path)
    with open(path, "rb") as fh:  # stat and hash the same file, even if replaced meanwhile
        st = os.fstat(fh.fileno())
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = _versions.get(key)
        if known is not None and known[0] == identity:
            return known[1]
        version = sha256_file(fh)[:12]
    _versions[key] = (identity, version)
    return version


def is_for_model(task_version: str, version: str | None) -> bool:
    """Whether a task enqueued for model ``task_version`` is work for the model of version
    ``version`` (None: no model at all). Only then may its result be stored under that
    version: one result per image and model."""
    return version is not None and task_version == version
