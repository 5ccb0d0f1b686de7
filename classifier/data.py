"""Loading labelled images into memory, reporting the ones that cannot be read."""

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from refund_sorter.images import UnreadableImage, open_rgb


@dataclass
class LoadedImages:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # int64 (N,) sub indices
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def load_images(
    files: Sequence[tuple[Path, int]],
    to_tensor: Callable,
    min_size: int,
    desc: str,
    workers: int = 4,
) -> LoadedImages:
    """Decode ``(path, label)`` pairs with ``to_tensor(pil)``; unreadable files are skipped.

    Decoding runs on a few threads: Pillow releases the GIL while it decodes.
    """

    def load(item: tuple[Path, int]):
        path, _ = item
        try:
            return to_tensor(open_rgb(path, min_size=min_size))
        except UnreadableImage as exc:
            return str(exc)

    kept, labels, skipped = [], [], []
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(load, files)
        for (path, label), result in tqdm(
            zip(files, results, strict=True), total=len(files), desc=desc, unit="img", leave=False
        ):
            if isinstance(result, str):
                skipped.append((path, result))
            else:
                kept.append(result)
                labels.append(label)
    images = torch.stack(kept) if kept else torch.empty(0, 3, min_size, min_size, dtype=torch.uint8)
    return LoadedImages(images, torch.tensor(labels, dtype=torch.long), skipped)
