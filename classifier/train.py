"""Training the dual-head classifier on a folder laid out ``<main>/<sub>/<image>``.

Run it as ``refund-sorter train DATA_DIR --out MODEL``. Images are decoded once into
memory at a little above the training size, then augmented on the fly, which on a
small CPU is several times faster than decoding JPEGs every epoch.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from classifier.checkpoint import Checkpoint, save_checkpoint
from classifier.data import LoadedImages, load_images
from classifier.network import ARCH, IMAGENET_MEAN, IMAGENET_STD, DualHeadNet, load_backbone_weights
from classifier.predict import autocast, forward_decide, resolve_device
from classifier.presets import EvalPreset, TrainPreset, cache_size, normalize, to_square
from classifier.recipe import TrainConfig
from classifier.splits import split_validation
from classifier.taxonomy import Taxonomy, read_layout, relabel
from refund_sorter.errors import UserError


@dataclass
class TrainSummary:
    model_path: Path
    version: str
    best_epoch: int
    metrics: dict
    n_train: int
    n_val: int
    seconds: float
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def select_files(data_dir: Path, cfg: TrainConfig):
    """Return the training data's taxonomy, the training and validation (file, sub index)
    pairs, and notes on what was left out."""
    layout = read_layout(data_dir, cfg.mapping)
    notes = [f"empty folder left out: {p}" for p in layout.empty_folders]
    notes += [f"file outside <main>/<sub>/ ignored: {p}" for p in layout.stray_files]
    if cfg.val_dir is None:
        train_files, val_files = split_validation(layout.files, cfg.val_fraction, cfg.seed)
        return layout.taxonomy, train_files, val_files, notes
    val_layout = read_layout(cfg.val_dir, cfg.mapping, min_subs=1)
    val_files, unknown = relabel(val_layout, layout.taxonomy)
    notes += [
        f"validation folder {folder} is not in the training data: {n} image(s) not used"
        for folder, n in unknown.items()
    ]
    return layout.taxonomy, layout.files, val_files, notes


def load_data(
    data_dir: Path, cfg: TrainConfig, device: torch.device, echo: Callable[[str], None]
) -> tuple[Taxonomy, LoadedImages, LoadedImages, list[str]]:
    """Pick the training and validation images and decode each once; say what was left out.

    Returns the taxonomy, both sets and the notes. Raises UserError when too few images
    can be read.
    """
    taxonomy, train_files, val_files, notes = select_files(data_dir, cfg)
    for note in notes:
        echo(f"note: {note}")
    echo(
        f"taxonomy: {len(taxonomy.main)} main, {len(taxonomy.sub)} sub categories; "
        f"{len(train_files)} training and {len(val_files)} validation files; device {device}"
    )
    size = cache_size(cfg.image_size)
    square = partial(to_square, size=size)
    train_data = load_images(train_files, square, size, "decoding training images")
    # Validation images go through exactly what evaluation and the workers use.
    eval_preset = EvalPreset(cfg.image_size)
    val_data = load_images(val_files, eval_preset, cfg.image_size, "decoding validation images")
    skipped = train_data.skipped + val_data.skipped
    for path, reason in skipped[:20]:
        echo(f"skipped {path}: {reason}")
    if len(skipped) > 20:
        echo(f"... and {len(skipped) - 20} more unreadable files")
    if len(train_data.labels) < 2:
        raise UserError(f"no readable training images in {data_dir}")
    if len(val_data.labels) == 0:
        raise UserError("no readable validation images: pass --val DIR or a larger --val-fraction")
    return taxonomy, train_data, val_data, notes


@dataclass
class Batches:
    """Training images as augmented full batches, in a new random order on each pass: the
    part of a DataLoader (``drop_last=True``) that training needs."""

    data: LoadedImages
    batch_size: int
    augment: TrainPreset
    sub_to_main: torch.Tensor

    def __len__(self) -> int:
        # The ragged last batch is dropped: a batch of one breaks BatchNorm.
        return len(self.data.labels) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (uint8 images, main labels, sub labels)."""
        order = torch.randperm(len(self.data.labels))
        for step in range(len(self)):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            images = torch.stack([self.augment(self.data.images[i]) for i in idx])
            sub_y = self.data.labels[idx]
            yield images, self.sub_to_main[sub_y], sub_y


def train_one_epoch(
    net: DualHeadNet,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Batches,
    device: torch.device,
    desc: str,
) -> float:
    """One pass over ``batches``, both heads learning; returns the mean training loss."""
    net.train()
    loss_sum = correct = seen = 0
    bar = tqdm(batches, desc=desc, unit="batch", leave=False)
    for images, main_y, sub_y in bar:
        x = normalize(images.to(device), IMAGENET_MEAN, IMAGENET_STD, channels_last=True)
        main_y, sub_y = main_y.to(device), sub_y.to(device)
        with autocast(device):
            main_logits, sub_logits = net(x)
            loss = criterion(main_logits.float(), main_y) + criterion(sub_logits.float(), sub_y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += float(loss.detach()) * len(sub_y)
        correct += int((sub_logits.argmax(1) == sub_y).sum())
        seen += len(sub_y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", sub_acc=f"{correct / seen:.3f}")
    return loss_sum / max(1, seen)


def evaluate_loaded(
    net, data: LoadedImages, taxonomy: Taxonomy, device: torch.device, batch_size: int = 128
) -> dict:
    """Accuracy per level on images prepared by ``EvalPreset`` (the workers' preprocessing),
    with the same joint decision as inference."""
    net.eval()
    sub_to_main = torch.tensor(taxonomy.sub_to_main, device=device)
    main_ok = sub_ok = 0
    for start in range(0, len(data.labels), batch_size):
        batch = data.images[start : start + batch_size]
        sub_idx, _, main_idx, _ = forward_decide(
            net, batch, IMAGENET_MEAN, IMAGENET_STD, sub_to_main, len(taxonomy.main), device
        )
        labels = data.labels[start : start + batch_size].to(device)
        sub_ok += int((sub_idx == labels).sum())
        main_ok += int((main_idx == sub_to_main[labels]).sum())
    n = max(1, len(data.labels))
    return {"main_accuracy": main_ok / n, "sub_accuracy": sub_ok / n}


def train(
    data_dir: Path, out: Path, cfg: TrainConfig, echo: Callable[[str], None] = print
) -> TrainSummary:
    """Train on ``data_dir`` and save to ``out`` each epoch that beats the best so far on
    validation (main plus sub accuracy)."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    taxonomy, train_data, val_data, notes = load_data(data_dir, cfg, device, echo)
    n_train, n_val = len(train_data.labels), len(val_data.labels)

    net = DualHeadNet(len(taxonomy.main), len(taxonomy.sub))
    source = load_backbone_weights(net, cfg.pretrained)
    run = _Run(data_dir=data_dir, cfg=cfg, pretrained_source=source, n_train=n_train, n_val=n_val)
    net = net.to(device, memory_format=torch.channels_last)
    sub_to_main = torch.tensor(taxonomy.sub_to_main)
    batch_size = min(cfg.batch_size, n_train)
    batches = Batches(train_data, batch_size, TrainPreset(cfg.image_size), sub_to_main)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * len(batches), pct_start=0.25
    )

    best_score, best_epoch, best_metrics, version, history = -1.0, 0, {}, "", []
    for epoch in range(1, cfg.epochs + 1):
        desc = f"epoch {epoch}/{cfg.epochs}"
        train_loss = train_one_epoch(net, criterion, optimizer, scheduler, batches, device, desc)
        metrics = {**evaluate_loaded(net, val_data, taxonomy, device), "train_loss": train_loss}
        history.append({"epoch": epoch, **metrics})
        score = metrics["main_accuracy"] + metrics["sub_accuracy"]
        marker = ""
        if score > best_score:
            best_score, best_epoch, best_metrics = score, epoch, metrics
            checkpoint = _checkpoint(
                net=net, taxonomy=taxonomy, run=run, epoch=epoch, metrics=metrics, history=history
            )
            version = save_checkpoint(checkpoint, out)
            marker = "  (best, saved)"
        echo(
            f"epoch {epoch:>3}/{cfg.epochs}: loss {train_loss:.3f}  "
            f"val main {metrics['main_accuracy']:.3f}  sub {metrics['sub_accuracy']:.3f}{marker}"
        )

    return TrainSummary(
        out,
        version,
        best_epoch,
        best_metrics,
        n_train,
        n_val,
        time.perf_counter() - started,
        train_data.skipped + val_data.skipped,
        notes,
    )


@dataclass(frozen=True)
class _Run:
    """What every checkpoint of a run records about it, fixed before the first epoch."""

    data_dir: Path
    cfg: TrainConfig
    pretrained_source: str
    n_train: int
    n_val: int


def _checkpoint(
    *,
    net: DualHeadNet,
    taxonomy: Taxonomy,
    run: _Run,
    epoch: int,
    metrics: dict,
    history: list[dict],
) -> Checkpoint:
    cfg = run.cfg
    return Checkpoint(
        state_dict=net.state_dict(),
        taxonomy=taxonomy,
        arch=ARCH,
        image_size=cfg.image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        meta={
            "dataset": str(Path(run.data_dir).resolve()),
            "validation": str(cfg.val_dir) if cfg.val_dir else f"fraction {cfg.val_fraction}",
            "epochs": cfg.epochs,
            "best_epoch": epoch,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "history": [dict(h) for h in history],
            "n_train": run.n_train,
            "n_val": run.n_val,
            "pretrained": run.pretrained_source,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()},
        },
    )
