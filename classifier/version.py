"""A model's version, derived from its file's bytes. Torch-free: the producer needs it."""

from pathlib import Path

from refund_sorter.images import sha256_file


def model_version(path: Path) -> str:
    return sha256_file(path)[:12]
