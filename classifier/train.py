"""Training the dual-head classifier on a folder laid out ``<main>/<sub>/<image>``.

Run it as ``refund-sorter train DATA_DIR --out MODEL``. Images are decoded once into
memory at a little above the training size, then augmented on the fly, which on a
small CPU is several times faster than decoding JPEGs every epoch.

After the last epoch the saved (best) checkpoint is calibrated on photos held out of
training: the ``--calibration-split`` of DATA_DIR, or the held-out fold with ``--folds K
--fold I``. Its temperature and the review threshold that reaches ``--review-target`` are
stored in it. A fold's figures also go to a JSON file beside the model, for
``refund-sorter cv-summary`` (``training.crossval``).
"""

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from classifier.calibration import (
    TEMPERATURE_BOUNDS,
    calibration_report,
    choose_review_threshold,
    coverage_table,
    fit_temperature,
    outcomes,
)
from classifier.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from classifier.data import LoadedImages, load_images
from classifier.network import Backbone, DualHeadNet, Tail, backbone
from classifier.predict import (
    Classifier,
    Decision,
    autocast,
    decide,
    forward_decide,
    joint_probabilities,
    resolve_device,
    resolve_precision,
)
from classifier.presets import (
    EvalPreset,
    MixupCutmix,
    TrainPreset,
    cache_size,
    normalize,
    to_square,
)
from classifier.pretrained import check_available, load_backbone_weights
from refund_sorter.errors import UserError
from refund_sorter.images import sha256_file
from refund_sorter.taxonomy import Taxonomy, read_layout, relabel
from training.crossval import write_fold_result
from training.recipe import TrainConfig
from training.splits import LabelledFiles, fold_split, split_validation


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
    calibration: dict = field(default_factory=dict)  # as stored in the checkpoint's meta
    warnings: list[str] = field(default_factory=list)
    fold_result: Path | None = None  # with --folds: the fold's figures, for cv-summary
    folders: list[tuple[Path, int]] = field(default_factory=list)  # each data folder's images


@dataclass
class FileSplit:
    """Which (file, sub index) pairs train, validate and calibrate, and notes on what was
    left out."""

    taxonomy: Taxonomy
    train: LabelledFiles
    val: LabelledFiles
    calibration: LabelledFiles  # for a cross-validation fold: the held-out fold, as val
    notes: list[str]
    folders: list[tuple[Path, int]]  # each data folder read, with its number of images


def select_files(data_dirs: Sequence[Path], cfg: TrainConfig) -> FileSplit:
    """Split the data folders, read as one: a cross-validation fold, or a validation set
    (``--val`` or a split) and a calibration split held out of training."""
    layout = read_layout(data_dirs, cfg.mapping)
    folders = layout.folders
    notes = [f"empty folder left out: {p}" for p in layout.empty_folders]
    notes += [f"file outside <main>/<sub>/ ignored: {p}" for p in layout.stray_files]
    if cfg.folds:
        train_files, held_out = fold_split(layout.files, cfg.folds, cfg.fold, cfg.seed)
        return FileSplit(layout.taxonomy, train_files, held_out, held_out, notes, folders)
    if cfg.val_dir is None:
        files, val_files = split_validation(layout.files, cfg.val_fraction, cfg.seed)
    else:
        val_layout = read_layout(cfg.val_dir, cfg.mapping, min_subs=1)
        val_files, unknown = relabel(val_layout, layout.taxonomy)
        notes += [
            f"validation folder {folder} is not in the training data: {n} image(s) not used"
            for folder, n in unknown.items()
        ]
        files = layout.files
    train_files, calibration_files = files, []
    if cfg.calibration_split > 0:
        train_files, calibration_files = split_validation(files, cfg.calibration_split, cfg.seed)
    return FileSplit(layout.taxonomy, train_files, val_files, calibration_files, notes, folders)


@dataclass
class TrainingData:
    taxonomy: Taxonomy
    train: LoadedImages  # uint8 squares a little above the training size, for augmenting
    val: LoadedImages  # prepared by EvalPreset, as the workers prepare photos
    calibration: LoadedImages  # likewise; for a cross-validation fold, the same object as val
    notes: list[str]
    folders: list[tuple[Path, int]]
    # The content hash of every photo the model saw, for training, validation or calibration:
    # a comparison of models on live photos must leave these out (a model must not be judged
    # on photos it learned).
    content_hashes: list[str]

    @property
    def skipped(self) -> list[tuple[Path, str]]:
        sets = [self.train, self.val] + ([] if self.calibration is self.val else [self.calibration])
        return [item for data in sets for item in data.skipped]


def load_data(
    data_dirs: Sequence[Path],
    cfg: TrainConfig,
    device: torch.device,
    precision: str,
    echo: Callable[[str], None],
) -> TrainingData:
    """Pick the training, validation and calibration images and decode each once; say what
    was left out. Raises UserError when too few images can be read."""
    split = select_files(data_dirs, cfg)
    taxonomy = split.taxonomy
    for note in split.notes:
        echo(f"note: {note}")
    if cfg.folds:
        held_out = f"fold {cfg.fold} of {cfg.folds}, also the calibration data"
    else:
        held_out = f"{len(split.calibration)} held out for calibration"
    echo(
        f"taxonomy: {len(taxonomy.main)} main, {len(taxonomy.sub)} sub categories; "
        f"{len(split.train)} training and {len(split.val)} validation files ({held_out}); "
        f"device {device}, precision {precision}"
    )
    size = cache_size(cfg.image_size)
    square = partial(to_square, size=size)
    train_data = load_images(split.train, square, size, "decoding training images")
    # Validation and calibration images go through exactly what evaluation and the workers use.
    eval_preset = EvalPreset(cfg.image_size)
    val_data = load_images(split.val, eval_preset, cfg.image_size, "decoding validation images")
    calibration = val_data
    if split.calibration is not split.val:
        calibration = load_images(
            split.calibration, eval_preset, cfg.image_size, "decoding calibration images"
        )
    data = TrainingData(
        taxonomy,
        train_data,
        val_data,
        calibration,
        split.notes,
        split.folders,
        _content_hashes([split.train, split.val, split.calibration]),
    )
    skipped = data.skipped
    for path, reason in skipped[:20]:
        echo(f"skipped {path}: {reason}")
    if len(skipped) > 20:
        echo(f"... and {len(skipped) - 20} more unreadable files")
    if len(train_data.labels) < 2:
        raise UserError(f"no readable training images in {_names(data_dirs)}")
    if len(val_data.labels) == 0:
        raise UserError("no readable validation images: pass --val DIR or a larger --val-fraction")
    return data


@dataclass
class Batches:
    """Training inputs as full batches, in a new random order on each pass: the part of a
    DataLoader (``drop_last=True``) that training needs. ``draw`` makes the inputs of the
    images at some indices (``augmented`` photos, or ``one_view_each``)."""

    labels: torch.Tensor
    batch_size: int
    draw: Callable[[torch.Tensor], torch.Tensor]
    sub_to_main: torch.Tensor
    # Draw images with replacement, each sub category equally often, instead of each image
    # once per pass.
    balanced: bool = False

    def __len__(self) -> int:
        # The ragged last batch is dropped: a batch of one breaks BatchNorm.
        return len(self.labels) // self.batch_size

    def order(self) -> torch.Tensor:
        """The images of one pass, by index."""
        labels = self.labels
        if not self.balanced:
            return torch.randperm(len(labels))
        weights = 1.0 / torch.bincount(labels).double()[labels]
        return torch.multinomial(weights, len(labels), replacement=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (inputs, main labels, sub labels)."""
        order = self.order()
        for step in range(len(self)):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            sub_y = self.labels[idx]
            yield self.draw(idx), self.sub_to_main[sub_y], sub_y


def augmented(images: torch.Tensor, augment: TrainPreset) -> Callable:
    """``Batches.draw``: uint8 photos, each augmented anew."""
    return lambda idx: torch.stack([augment(images[i]) for i in idx])


def one_view_each(views: torch.Tensor) -> Callable:
    """``Batches.draw`` over stored views (V, N, ...): one of each image's V, at random."""
    return lambda idx: views[torch.randint(len(views), (len(idx),)), idx]


def train_one_epoch(
    model: nn.Module,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Batches,
    precision: str,
    desc: str,
    mix: MixupCutmix | None = None,
    after_step: Callable[[], None] | None = None,
) -> float:
    """One pass over ``batches``, both heads learning; returns the mean training loss.

    ``model`` maps the inputs, once ``prepare`` has put them on its device in its format, to
    both heads' logits: the whole network, or a ``Tail`` on stored views. ``precision``
    (fp32, bf16 or fp16, as ``resolve_precision`` gives it) is the forward pass's arithmetic;
    ``mix`` mixes each batch's inputs and both heads' targets; ``after_step`` runs after every
    step (the weights' moving average). The accuracy shown is against the unmixed labels."""
    model.train()
    device = next(model.parameters()).device
    loss_sum = correct = seen = 0
    bar = tqdm(batches, desc=desc, unit="batch", leave=False)
    for inputs, main_y, sub_y in bar:
        x = prepare(inputs)
        main_y, sub_y = main_y.to(device), sub_y.to(device)
        main_target, sub_target = main_y, sub_y
        if mix is not None:
            x, main_target, sub_target = mix(x, main_y, sub_y)
        with autocast(device, precision):
            main_logits, sub_logits = model(x)
            loss = criterion(main_logits.float(), main_target) + criterion(
                sub_logits.float(), sub_target
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        loss_sum += float(loss.detach()) * len(sub_y)
        correct += int((sub_logits.argmax(1) == sub_y).sum())
        seen += len(sub_y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", sub_acc=f"{correct / seen:.3f}")
    return loss_sum / max(1, seen)


def evaluate_loaded(
    net,
    data: LoadedImages,
    taxonomy: Taxonomy,
    device: torch.device,
    precision: str,
    batch_size: int = 128,
) -> dict:
    """Accuracy per level on images prepared by ``EvalPreset`` (the workers' preprocessing),
    with the same joint decision as inference."""
    net.eval()
    spec = backbone(net.arch)
    sub_to_main = torch.tensor(taxonomy.sub_to_main, device=device)
    decided = [
        forward_decide(
            net,
            data.images[start : start + batch_size],
            spec.mean,
            spec.std,
            sub_to_main,
            len(taxonomy.main),
            device,
            precision,
        )
        for start in range(0, len(data.labels), batch_size)
    ]
    return _accuracy(decided, data.labels, sub_to_main)


@torch.inference_mode()
def evaluate_stored(
    tail: Tail,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    taxonomy: Taxonomy,
    precision: str,
    batch_size: int = 256,
) -> dict:
    """``evaluate_loaded`` for a network whose trunk's outputs for the images are stored."""
    tail.eval()
    device = next(tail.parameters()).device
    sub_to_main = torch.tensor(taxonomy.sub_to_main, device=device)
    decided = []
    for start in range(0, len(labels), batch_size):
        with autocast(device, precision):
            main_logits, sub_logits = tail(inputs[start : start + batch_size].to(device))
        joint = joint_probabilities(main_logits, sub_logits, sub_to_main)
        decided.append(Decision(*decide(joint, sub_to_main, len(taxonomy.main)), joint))
    return _accuracy(decided, labels, sub_to_main)


def _accuracy(decided: list[Decision], labels: torch.Tensor, sub_to_main: torch.Tensor) -> dict:
    labels = labels.to(sub_to_main.device)
    sub, main = torch.cat([d.sub for d in decided]), torch.cat([d.main for d in decided])
    return {
        "main_accuracy": int((main == sub_to_main[labels]).sum()) / len(labels),
        "sub_accuracy": int((sub == labels).sum()) / len(labels),
    }


@torch.inference_mode()
def trunk_outputs(
    trunk: nn.Module,
    draw: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    spec: Backbone,
    precision: str,
    desc: str,
    batch_size: int = 64,
) -> torch.Tensor:
    """The frozen ``trunk``'s outputs, in float32 on the CPU, for the inputs ``draw`` makes
    of images 0..n-1."""
    trunk.eval()
    device = next(trunk.parameters()).device
    outputs = []
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", leave=False):
        idx = torch.arange(start, min(n, start + batch_size))
        x = normalize(draw(idx).to(device), spec.mean, spec.std, channels_last=True)
        with autocast(device, precision):
            outputs.append(trunk(x).float().cpu())
    return torch.cat(outputs)


def train(
    data_dirs: Path | Sequence[Path],
    out: Path,
    cfg: TrainConfig,
    echo: Callable[[str], None] = print,
) -> TrainSummary:
    """Train on ``data_dirs`` (one data folder, or several read as one) and save to ``out``
    each epoch that beats the best so far on validation (main plus sub accuracy); then
    calibrate the saved model."""
    data_dirs = [Path(data_dirs)] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    # An unknown backbone, or weights that are not there, are refused before photos are decoded.
    spec = backbone(cfg.backbone)
    check_available(cfg.backbone, cfg.pretrained)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    data = load_data(data_dirs, cfg, device, precision, echo)
    taxonomy = data.taxonomy
    n_train, n_val = len(data.train.labels), len(data.val.labels)

    net = DualHeadNet(
        len(taxonomy.main), len(taxonomy.sub), arch=cfg.backbone, image_size=cfg.image_size
    )
    source = load_backbone_weights(net, cfg.pretrained)
    run = _Run(data=data, cfg=cfg, pretrained_source=source, n_train=n_train, n_val=n_val)
    net = net.to(device, memory_format=torch.channels_last)
    ema = None
    if cfg.model_ema:
        # As torchvision's references: the average covers BatchNorm's statistics too.
        ema_fn = get_ema_multi_avg_fn(cfg.model_ema_decay)
        ema = AveragedModel(net, multi_avg_fn=ema_fn, use_buffers=True)
    kept = net if ema is None else ema.module  # the weights validated and saved
    sub_to_main = torch.tensor(taxonomy.sub_to_main)
    batch_size = min(cfg.batch_size, n_train)
    augment = TrainPreset(cfg.image_size, spec.mean, cfg.auto_augment, cfg.random_erase)
    if cfg.train_stages:
        # The trunk is frozen: its output for each view of each photo is computed once here.
        model = net.tail(cfg.train_stages)
        trunk = net.trunk(cfg.train_stages)
        views = torch.stack(
            [
                trunk_outputs(
                    trunk,
                    augmented(data.train.images, augment),
                    n_train,
                    spec,
                    precision,
                    f"trunk outputs, view {v + 1}/{cfg.views}",
                )
                for v in range(cfg.views)
            ]
        )
        val_inputs = trunk_outputs(
            trunk, lambda idx: data.val.images[idx], n_val, spec, precision, "validation trunk"
        )
        draw = one_view_each(views)

        def prepare(x: torch.Tensor) -> torch.Tensor:
            return x.to(device, memory_format=torch.channels_last)

        def validate() -> dict:
            tail = kept.tail(cfg.train_stages)
            return evaluate_stored(tail, val_inputs, data.val.labels, taxonomy, precision)
    else:
        model, draw = net, augmented(data.train.images, augment)

        def prepare(x: torch.Tensor) -> torch.Tensor:
            return normalize(x.to(device), spec.mean, spec.std, channels_last=True)

        def validate() -> dict:
            return evaluate_loaded(kept, data.val, taxonomy, device, precision)

    batches = Batches(data.train.labels, batch_size, draw, sub_to_main, cfg.balanced_sampling)
    mix = None
    if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
        mix = MixupCutmix(cfg.mixup_alpha, cfg.cutmix_alpha, len(taxonomy.main), len(taxonomy.sub))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    heads = net.head_parameters()
    head_ids = {id(p) for p in heads}
    rest = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [
        {"params": heads, "lr": cfg.lr},
        {"params": rest, "lr": cfg.lr * cfg.backbone_lr_scale},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    # OneCycleLR divides by zero below 5 steps, which only a test-sized run has.
    steps = max(5, cfg.epochs * len(batches))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.25
    )
    after_step = None if ema is None else partial(ema.update_parameters, net)

    best_score, best_epoch, best_metrics, history = -1.0, 0, {}, []
    for epoch in range(1, cfg.epochs + 1):
        desc = f"epoch {epoch}/{cfg.epochs}"
        train_loss = train_one_epoch(
            model,
            prepare,
            criterion,
            optimizer,
            scheduler,
            batches,
            precision,
            desc,
            mix,
            after_step,
        )
        metrics = {**validate(), "train_loss": train_loss}
        history.append({"epoch": epoch, **metrics})
        score = metrics["main_accuracy"] + metrics["sub_accuracy"]
        marker = ""
        if score > best_score:
            best_score, best_epoch, best_metrics = score, epoch, metrics
            checkpoint = _checkpoint(
                net=kept, taxonomy=taxonomy, run=run, epoch=epoch, metrics=metrics, history=history
            )
            save_checkpoint(checkpoint, out)
            marker = "  (best, saved)"
        echo(
            f"epoch {epoch:>3}/{cfg.epochs}: loss {train_loss:.3f}  "
            f"val main {metrics['main_accuracy']:.3f}  sub {metrics['sub_accuracy']:.3f}{marker}"
        )

    version, calibration, warnings = calibrate(out, data.calibration, cfg, echo)
    summary = TrainSummary(
        out,
        version,
        best_epoch,
        best_metrics,
        n_train,
        n_val,
        time.perf_counter() - started,
        data.skipped,
        data.notes,
        calibration,
        warnings,
        folders=data.folders,
    )
    if cfg.folds:
        summary.fold_result = write_fold_result(
            out,
            {
                "data_dir": _names(data_dirs),
                "folds": cfg.folds,
                "fold": cfg.fold,
                "seed": cfg.seed,
                "recipe": _recipe_args(cfg),
                "model": str(out),
                "model_version": version,
                "n_train": n_train,
                "n_val": n_val,
                "epochs": cfg.epochs,
                "best_epoch": best_epoch,
                "best": {k: best_metrics[k] for k in ("main_accuracy", "sub_accuracy")},
                "last": {k: metrics[k] for k in ("main_accuracy", "sub_accuracy")},
                "calibration": calibration,
                "seconds": summary.seconds,
            },
        )
    return summary


def calibrate(
    path: Path, images: LoadedImages, cfg: TrainConfig, echo: Callable[[str], None]
) -> tuple[str, dict, list[str]]:
    """Fit the temperature and choose the review threshold of the model saved at ``path`` on
    ``images`` (held out of training), as the workers will run it; store both in the
    checkpoint. Returns its new version, what was found and any warning."""
    checkpoint = load_checkpoint(path)
    n = len(images.labels)
    if n == 0:
        checkpoint.meta["calibration"] = {"images": 0}
        echo(
            "note: no calibration images: the model keeps temperature 1 and review threshold "
            f"{checkpoint.review_threshold}"
        )
        return save_checkpoint(checkpoint, path), checkpoint.meta["calibration"], []
    clf = Classifier(checkpoint, cfg.device, cfg.precision, runtime="torch")
    main_logits, sub_logits = clf.logits(images.images)
    temperature = fit_temperature(main_logits, sub_logits, images.labels, clf.sub_to_main)
    args = (main_logits, sub_logits, images.labels, clf.sub_to_main, len(clf.taxonomy.main))
    scaled = outcomes(*args, temperature)
    ece = calibration_report(outcomes(*args), scaled)
    table = coverage_table(scaled)
    chosen = choose_review_threshold(table, cfg.review_target)
    warnings = []
    if chosen is None:
        chosen = next(row for row in table if row["threshold"] == 1.0)
        warnings.append(
            f"no review threshold leaves photos that are {cfg.review_target:.0%} right on both "
            f"levels on the {n} calibration images: stored 1.0, so every photo is flagged for "
            "review. Improve the model, lower --review-target, or set "
            "REFUND_SORTER_REVIEW_THRESHOLD for the workers."
        )
    found = {
        "images": n,
        "held_out": f"fold {cfg.fold} of {cfg.folds}"
        if cfg.folds
        else f"calibration split {cfg.calibration_split} of the training data",
        "temperature": temperature,
        "ece": {
            level: {when: ece[level][f"ece_{when}"] for when in ("before", "after")}
            for level in ("main", "sub")
        },
        "review_target": cfg.review_target,
        "target_reached": not warnings,
        "review_threshold": chosen["threshold"],
        "flagged": chosen["flagged"],
        "kept_main_accuracy": chosen["main_accuracy"],
        "kept_sub_accuracy": chosen["sub_accuracy"],
    }
    if temperature in TEMPERATURE_BOUNDS:
        echo(
            f"note: the temperature stopped at its bound {temperature}: the {n} calibration "
            "images do not show how sure the model should be (all right, say); more would"
        )
    checkpoint.temperature = temperature
    checkpoint.review_threshold = chosen["threshold"]
    checkpoint.meta["calibration"] = found
    echo(
        f"calibration on {n} held-out images: temperature {temperature:.3f}; expected "
        f"calibration error sub {found['ece']['sub']['before']:.3f} -> "
        f"{found['ece']['sub']['after']:.3f}, main {found['ece']['main']['before']:.3f} -> "
        f"{found['ece']['main']['after']:.3f}"
    )
    echo(
        f"review threshold {chosen['threshold']:.3f}: {chosen['flagged']:.1%} of photos flagged"
        + (
            f", the rest {chosen['sub_accuracy']:.1%} right (sub), "
            f"{chosen['main_accuracy']:.1%} (main)"
            if chosen["kept"]
            else ""
        )
    )
    for warning in warnings:
        echo(f"WARNING: {warning}")
    return save_checkpoint(checkpoint, path), found, warnings


@dataclass(frozen=True)
class _Run:
    """What every checkpoint of a run records about it, fixed before the first epoch."""

    data: TrainingData
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
    spec = backbone(net.arch)
    return Checkpoint(
        state_dict=net.state_dict(),
        taxonomy=taxonomy,
        arch=net.arch,
        image_size=cfg.image_size,
        mean=spec.mean,
        std=spec.std,
        meta={
            "datasets": [
                {"path": str(folder), "photos": photos} for folder, photos in run.data.folders
            ],
            "content_hashes": run.data.content_hashes,
            "validation": _validation(cfg),
            "epochs": cfg.epochs,
            "best_epoch": epoch,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "history": [dict(h) for h in history],
            "n_train": run.n_train,
            "n_val": run.n_val,
            "pretrained": run.pretrained_source,
            "args": _recipe_args(cfg),
        },
    )


def _names(folders: Sequence[Path]) -> str:
    return ", ".join(str(Path(folder).resolve()) for folder in folders)


def _content_hashes(sets: Sequence[LabelledFiles]) -> list[str]:
    """Sorted content hashes of the files in ``sets`` (an unreadable file has none)."""
    hashes = set()
    for files in sets:
        for path, _ in files:
            try:
                hashes.add(sha256_file(path))
            except OSError:
                continue
    return sorted(hashes)


def _validation(cfg: TrainConfig) -> str:
    if cfg.folds:
        return f"fold {cfg.fold} of {cfg.folds}"
    return str(cfg.val_dir) if cfg.val_dir else f"fraction {cfg.val_fraction}"


def _recipe_args(cfg: TrainConfig) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()}
