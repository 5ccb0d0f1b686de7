"""Model commands: train, evaluate and classify, for whoever trains and checks the model."""

import json
import sys
from pathlib import Path

import click

from classifier.recipe import TrainConfig
from cli.common import device_option, friendly, mapping_option, precision_option
from refund_sorter.errors import UserError

DEFAULTS = TrainConfig()
OUTPUT_FILE = click.Path(path_type=Path, dir_okay=False)


def recipe_option(flag: str, help: str, **kwargs):
    """An option whose default is the training recipe's, declared once in ``TrainConfig``."""
    default = getattr(DEFAULTS, flag.removeprefix("--").replace("-", "_"))
    return click.option(flag, default=default, show_default=True, help=help, **kwargs)


@click.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", type=OUTPUT_FILE, required=True, help="Where to write the best checkpoint.")
@recipe_option("--epochs", "Training epochs.", type=click.IntRange(min=1))
@recipe_option("--image-size", "Side of the square input.", type=click.IntRange(min=16))
@recipe_option("--batch-size", "Images per training step.", type=click.IntRange(min=2))
@recipe_option("--lr", "Peak learning rate (one-cycle).")
@device_option
@recipe_option(
    "--pretrained", "Backbone start: 'imagenet' (torchvision weights), 'none', or a weights file."
)
@recipe_option("--seed", "Random seed.")
@click.option(
    "--val",
    "val_dir",
    type=click.Path(path_type=Path),
    help="Validation folder (same layout). Default: a split of DATA_DIR.",
)
@recipe_option(
    "--val-fraction", "Share of DATA_DIR held out for validation when --val is not given."
)
@mapping_option
@friendly
def train(
    data_dir,
    out,
    epochs,
    image_size,
    batch_size,
    lr,
    device,
    pretrained,
    seed,
    val_dir,
    val_fraction,
    mapping,
) -> None:
    """Train the dual-head classifier on DATA_DIR laid out <main>/<sub>/<image>."""
    from classifier.train import train as run_training

    cfg = TrainConfig(
        epochs=epochs,
        image_size=image_size,
        batch_size=batch_size,
        lr=lr,
        device=device,
        pretrained=pretrained,
        seed=seed,
        val_dir=val_dir,
        val_fraction=val_fraction,
        mapping=mapping,
    )
    summary = run_training(data_dir, out, cfg, echo=click.echo)
    m = summary.metrics
    click.echo(
        f"\nsaved {summary.model_path} (version {summary.version}, epoch {summary.best_epoch})\n"
        f"validation accuracy: main {m['main_accuracy']:.3f}, sub {m['sub_accuracy']:.3f}\n"
        f"images: {summary.n_train} train, {summary.n_val} validation, "
        f"{len(summary.skipped)} unreadable skipped\n"
        f"time: {summary.seconds / 60:.1f} min"
    )


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--report",
    type=OUTPUT_FILE,
    required=True,
    help="JSON report to write; a PNG of the confusion matrices goes beside it.",
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
@mapping_option
@friendly
def evaluate(model, data_dir, report, batch_size, device, precision, mapping) -> None:
    """Measure MODEL's accuracy on DATA_DIR laid out <main>/<sub>/<image>."""
    from classifier.evaluate import evaluate as run_evaluation

    result = run_evaluation(
        model,
        data_dir,
        report,
        batch_size=batch_size,
        device=device,
        precision=precision,
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
    click.echo(f"report: {report} and {Path(report).with_suffix('.png')}")


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
    from classifier.checkpoint import load_checkpoint, save_checkpoint
    from classifier.predict import build_network
    from classifier.quantize import calibrate, passes
    from classifier.taxonomy import read_layout

    ckpt = load_checkpoint(model)
    files = [path for path, _ in read_layout(data_dir, mapping, min_subs=1).files]
    try:
        ckpt.int8 = calibrate(
            ckpt, build_network(ckpt), files, photos=photos, check=check, echo=click.echo
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    version = save_checkpoint(ckpt, out)
    verdict = "picks int8" if passes(ckpt.int8) else "keeps fp32 or bf16 (below 99%)"
    click.echo(f"saved {out} (version {version}); automatic precision on a CPU {verdict}")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", type=click.Path(path_type=Path), nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@device_option
@precision_option
@friendly
def classify(model, images, as_json, device, precision) -> None:
    """Classify a few IMAGES with MODEL and print the predictions."""
    from classifier.predict import Classifier
    from refund_sorter.images import UnreadableImage, open_rgb

    clf = Classifier.from_path(model, device, precision)
    rows, loaded = [], []
    for path in images:
        try:
            loaded.append((path, open_rgb(path, min_size=clf.checkpoint.image_size)))
        except UnreadableImage as exc:
            rows.append({"file": str(path), "status": "failed", "error": str(exc)})
    for (path, _), pred in zip(loaded, clf.predict_images([img for _, img in loaded]), strict=True):
        rows.append({"file": str(path), "status": "ok", **vars(pred)})
    rows.sort(key=lambda r: images.index(Path(r["file"])))
    if as_json:
        click.echo(
            json.dumps(
                {"model_version": clf.version, "precision": clf.precision, "predictions": rows},
                indent=2,
            )
        )
    else:
        width = max(len(r["file"]) for r in rows)
        for r in rows:
            if r["status"] == "ok":
                click.echo(
                    f"{r['file']:<{width}}  {r['main']:>12} {r['main_confidence']:.2f}  "
                    f"{r['sub']:>12} {r['sub_confidence']:.2f}"
                )
            else:
                click.echo(f"{r['file']:<{width}}  failed: {r['error']}")
    if any(r["status"] == "failed" for r in rows):
        sys.exit(1)
