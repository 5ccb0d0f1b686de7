"""Training the dual-head classifier on a folder laid out ``<main>/<sub>/<image>``.

Run it as ``refund-sorter train DATA_DIR --out MODEL``. Images are decoded once into
memory at a little above the training size, then augmented on the fly, which on a
small CPU is several times faster than decoding JPEGs every epoch.
"""

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from classifier.checkpoint import Checkpoint, save_checkpoint
from classifier.data import LoadedImages, load_images
from classifier.network import ARCH, IMAGENET_MEAN, IMAGENET_STD, DualHeadNet, load_backbone_weights
from classifier.predict import autocast, decide, joint_probabilities, resolve_device
from classifier.presets import EvalPreset, TrainPreset, cache_size, normalize, to_square
from classifier.taxonomy import Taxonomy, read_layout
from refund_sorter.errors import UserError


@dataclass
class TrainConfig:
    epochs: int = 60
    image_size: int = 128
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    device: str = "auto"
    pretrained: str = "none"
    seed: int = 0
    val_dir: Path | None = None
    val_fraction: float = 0.1
    mapping: Path | None = None


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


def split_validation(files, fraction: float, seed: int):
    """Stratified split: each sub category gives ``fraction`` of its files (at least one)."""
    rng = random.Random(seed)
    by_label: dict[int, list] = {}
    for item in files:
        by_label.setdefault(item[1], []).append(item)
    train, val = [], []
    for items in by_label.values():
        items = items[:]
        rng.shuffle(items)
        n_val = max(1, round(len(items) * fraction)) if len(items) > 1 else 0
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def _val_files(cfg: TrainConfig, taxonomy: Taxonomy, notes: list[str]):
    layout = read_layout(cfg.val_dir, cfg.mapping, min_subs=1)
    files, unknown = [], {}
    for path, idx in layout.files:
        main = layout.taxonomy.main[layout.taxonomy.sub_to_main[idx]]
        sub = layout.taxonomy.sub[idx]
        mapped = taxonomy.index_of(main, sub)
        if mapped is None:
            unknown[f"{main}/{sub}"] = unknown.get(f"{main}/{sub}", 0) + 1
        else:
            files.append((path, mapped))
    for folder, n in unknown.items():
        notes.append(
            f"validation folder {folder} is not in the training data: {n} image(s) not used"
        )
    return files


def evaluate_loaded(
    net, data: LoadedImages, taxonomy: Taxonomy, device: torch.device, batch_size: int = 128
) -> dict:
    """Accuracy per level on images prepared by ``EvalPreset`` (the workers' preprocessing),
    with the same joint decision as inference."""
    net.eval()
    sub_to_main = torch.tensor(taxonomy.sub_to_main, device=device)
    main_ok = sub_ok = 0
    with torch.inference_mode():
        for start in range(0, len(data.labels), batch_size):
            batch = data.images[start : start + batch_size].to(device)
            x = normalize(batch, IMAGENET_MEAN, IMAGENET_STD, channels_last=True)
            with autocast(device):
                main_logits, sub_logits = net(x)
            joint = joint_probabilities(main_logits, sub_logits, sub_to_main)
            sub_idx, _, main_idx, _ = decide(joint, sub_to_main, len(taxonomy.main))
            labels = data.labels[start : start + batch_size].to(device)
            sub_ok += int((sub_idx == labels).sum())
            main_ok += int((main_idx == sub_to_main[labels]).sum())
    n = max(1, len(data.labels))
    return {"main_accuracy": main_ok / n, "sub_accuracy": sub_ok / n}


def train(
    data_dir: Path, out: Path, cfg: TrainConfig, echo: Callable[[str], None] = print
) -> TrainSummary:
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    layout = read_layout(data_dir, cfg.mapping)
    taxonomy = layout.taxonomy
    notes = [f"empty folder left out: {p}" for p in layout.empty_folders]
    notes += [f"file outside <main>/<sub>/ ignored: {p}" for p in layout.stray_files]

    if cfg.val_dir is not None:
        train_files, val_files = layout.files, _val_files(cfg, taxonomy, notes)
    else:
        train_files, val_files = split_validation(layout.files, cfg.val_fraction, cfg.seed)
    for note in notes:
        echo(f"note: {note}")
    echo(
        f"taxonomy: {len(taxonomy.main)} main, {len(taxonomy.sub)} sub categories; "
        f"{len(train_files)} training and {len(val_files)} validation files; device {device}"
    )

    size = cache_size(cfg.image_size)
    square = lambda img: to_square(img, size)  # noqa: E731
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

    net = DualHeadNet(len(taxonomy.main), len(taxonomy.sub))
    pretrained_source = load_backbone_weights(net, cfg.pretrained)
    net = net.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train_data.labels)
    batch_size = min(cfg.batch_size, n)
    steps = n // batch_size  # drop the ragged last batch: a batch of one breaks BatchNorm
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.25
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    sub_to_main = torch.tensor(taxonomy.sub_to_main)
    augment = TrainPreset(cfg.image_size)

    best_score, best_epoch, best_metrics, version, history = -1.0, 0, {}, "", []
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        order = torch.randperm(n)
        loss_sum = correct = seen = 0
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False)
        for step in bar:
            idx = order[step * batch_size : (step + 1) * batch_size]
            batch = torch.stack([augment(train_data.images[i]) for i in idx])
            x = normalize(batch.to(device), IMAGENET_MEAN, IMAGENET_STD, channels_last=True)
            sub_y = train_data.labels[idx].to(device)
            main_y = sub_to_main.to(device)[sub_y]
            with autocast(device):
                main_logits, sub_logits = net(x)
                loss = criterion(main_logits.float(), main_y) + criterion(sub_logits.float(), sub_y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((sub_logits.argmax(1) == sub_y).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", sub_acc=f"{correct / seen:.3f}")
        metrics = evaluate_loaded(net, val_data, taxonomy, device)
        metrics["train_loss"] = loss_sum / max(1, seen)
        history.append({"epoch": epoch, **metrics})
        score = metrics["main_accuracy"] + metrics["sub_accuracy"]
        marker = ""
        if score > best_score:
            best_score, best_epoch, best_metrics = score, epoch, metrics
            version = save_checkpoint(
                _checkpoint(
                    net,
                    taxonomy,
                    cfg,
                    data_dir,
                    epoch,
                    metrics,
                    pretrained_source,
                    len(train_data.labels),
                    len(val_data.labels),
                    history,
                ),
                out,
            )
            marker = "  (best, saved)"
        echo(
            f"epoch {epoch:>3}/{cfg.epochs}: loss {metrics['train_loss']:.3f}  "
            f"val main {metrics['main_accuracy']:.3f}  sub {metrics['sub_accuracy']:.3f}{marker}"
        )

    return TrainSummary(
        out,
        version,
        best_epoch,
        best_metrics,
        len(train_data.labels),
        len(val_data.labels),
        time.perf_counter() - started,
        skipped,
        notes,
    )


def _checkpoint(
    net,
    taxonomy,
    cfg: TrainConfig,
    data_dir,
    epoch,
    metrics,
    pretrained_source,
    n_train,
    n_val,
    history,
) -> Checkpoint:
    return Checkpoint(
        state_dict=net.state_dict(),
        taxonomy=taxonomy,
        arch=ARCH,
        image_size=cfg.image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        meta={
            "dataset": str(Path(data_dir).resolve()),
            "validation": str(cfg.val_dir) if cfg.val_dir else f"fraction {cfg.val_fraction}",
            "epochs": cfg.epochs,
            "best_epoch": epoch,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "history": [dict(h) for h in history],
            "n_train": n_train,
            "n_val": n_val,
            "pretrained": pretrained_source,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()},
        },
    )
