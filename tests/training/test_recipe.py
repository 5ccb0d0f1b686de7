"""The torch-free modules (the training plan, the model registry, the category tree): the
modules the CLI and producer import at startup do not pull in PyTorch."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "module",
    [
        "training.recipe",
        "refund_sorter.taxonomy",
        "registry.registry",
        "registry.checkpoint_taxonomy",
        "registry.version",
        "training.splits",
        "training.crossval",
    ],
)
def test_torch_free_modules_do_not_import_torch(module):
    code = (
        f"import sys, {module}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
