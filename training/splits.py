"""How a data folder's files are divided: validation and calibration splits, and the folds
of a cross-validation. Every split is stratified by sub category and fixed by its seed.

Torch-free: the cross-validation summary reads fold results without PyTorch.
"""

import random
from pathlib import Path

LabelledFiles = list[tuple[Path, int]]  # (image file, sub index)


def _by_label(files: LabelledFiles) -> dict[int, LabelledFiles]:
    by_label: dict[int, LabelledFiles] = {}
    for item in files:
        by_label.setdefault(item[1], []).append(item)
    return by_label


def split_validation(files: LabelledFiles, fraction: float, seed: int):
    """Stratified split: each sub category gives ``fraction`` of its files (at least one)."""
    rng = random.Random(seed)
    train, val = [], []
    for items in _by_label(files).values():
        items = items[:]
        rng.shuffle(items)
        n_val = max(1, round(len(items) * fraction)) if len(items) > 1 else 0
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def stratified_folds(files: LabelledFiles, folds: int, seed: int) -> list[LabelledFiles]:
    """Deal the files into ``folds`` folds: each sub category's files, in an order shuffled by
    ``seed``, go round the folds in turn, carrying on where the previous category stopped.
    Every fold gets each category's share (give or take one file), and fold sizes differ by
    one file at most. The same files and seed give the same folds, whatever order the files
    are listed in."""
    rng = random.Random(seed)
    dealt: list[LabelledFiles] = [[] for _ in range(folds)]
    turn = 0
    for _, items in sorted(_by_label(files).items()):
        items = sorted(items)
        rng.shuffle(items)
        for item in items:
            dealt[turn % folds].append(item)
            turn += 1
    return dealt


def fold_split(files: LabelledFiles, folds: int, fold: int, seed: int):
    """(training files, held-out files) for fold number ``fold`` (1..folds)."""
    dealt = stratified_folds(files, folds, seed)
    held_out = dealt[fold - 1]
    return [item for i, part in enumerate(dealt) if i != fold - 1 for item in part], held_out
