"""The ``refund-sorter`` command line.

Heavy imports (PyTorch, Celery) happen inside the commands that need them, so that
``refund-sorter --help``, ``db`` and ``export`` start instantly and without PyTorch.
"""

import functools
import json
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from refund_sorter.errors import UserError

device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto picks CUDA when present.",
)
mapping_option = click.option(
    "--mapping",
    type=click.Path(path_type=Path),
    help="JSON {sub: main} for the old flat <index>_<sub>/ layout.",
)


def friendly(func):
    """Turn operator-fixable errors into one plain line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
        except ValidationError as exc:
            problems = "; ".join(
                f"REFUND_SORTER_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                for e in exc.errors()
            )
            click.secho(f"error: invalid setting: {problems}", fg="red", err=True)
            sys.exit(1)
        except ModuleNotFoundError as exc:
            if exc.name not in ("torch", "torchvision", "matplotlib"):
                raise
            click.secho(
                "error: this command needs the model libraries (PyTorch); install "
                "them with: pip install -c constraints.txt '.[ml]'",
                fg="red",
                err=True,
            )
            sys.exit(1)

    return wrapper


@click.group()
@click.version_option(package_name="refund-sorter")
def main() -> None:
    """Sort photos of returned clothing into main and sub categories."""


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Where to write the best checkpoint.",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=60, show_default=True, help="Training epochs."
)
@click.option(
    "--image-size",
    type=click.IntRange(min=16),
    default=128,
    show_default=True,
    help="Side of the square input.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=2),
    default=64,
    show_default=True,
    help="Images per training step.",
)
@click.option("--lr", default=2e-3, show_default=True, help="Peak learning rate (one-cycle).")
@device_option
@click.option(
    "--pretrained",
    default="none",
    show_default=True,
    help="Backbone start: 'imagenet' (torchvision weights), 'none', or a weights file.",
)
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option(
    "--val",
    "val_dir",
    type=click.Path(path_type=Path),
    help="Validation folder (same layout). Default: a split of DATA_DIR.",
)
@click.option(
    "--val-fraction",
    default=0.1,
    show_default=True,
    help="Share of DATA_DIR held out for validation when --val is not given.",
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
    from classifier.train import TrainConfig
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


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
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
@mapping_option
@friendly
def evaluate(model, data_dir, report, batch_size, device, mapping) -> None:
    """Measure MODEL's accuracy on DATA_DIR laid out <main>/<sub>/<image>."""
    from classifier.evaluate import evaluate as run_evaluation

    result = run_evaluation(
        model, data_dir, report, batch_size=batch_size, device=device, mapping=mapping
    )
    click.echo(
        f"{result['n_images']} images: main accuracy {result['main_accuracy']:.3f}, "
        f"sub accuracy {result['sub_accuracy']:.3f}"
    )
    for folder, n in result["unknown_folders"].items():
        click.echo(f"not in the model's taxonomy: {folder} ({n} images, not scored)")
    for item in result["skipped"][:20]:
        click.echo(f"skipped {item['path']}: {item['reason']}")
    if len(result["skipped"]) > 20:
        click.echo(f"... and {len(result['skipped']) - 20} more unreadable files")
    click.echo(f"report: {report} and {Path(report).with_suffix('.png')}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", type=click.Path(path_type=Path), nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@device_option
@friendly
def classify(model, images, as_json, device) -> None:
    """Classify a few IMAGES with MODEL and print the predictions."""
    from classifier.predict import Classifier
    from refund_sorter.images import UnreadableImage, open_rgb

    clf = Classifier.from_path(model, device)
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
        click.echo(json.dumps({"model_version": clf.version, "predictions": rows}, indent=2))
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


@main.command()
@click.option(
    "--local", is_flag=True, help="Classify in this process, without a broker or workers."
)
@click.option("--wait", is_flag=True, help="Follow the run until the workers finish it.")
@click.option(
    "--timeout",
    default=3600.0,
    show_default=True,
    help="Seconds --wait follows the run before giving up.",
)
@friendly
def sweep(local, wait, timeout) -> None:
    """Sweep the incoming folder once: classify every new image, file it, export the CSV."""
    from producer.sweep import run_sweep
    from refund_sorter.config import get_settings
    from refund_sorter.db import check_schema

    settings = get_settings()
    check_schema(settings.database_url)
    if local:
        dispatch, trigger = _local_dispatch(settings), "local"
    else:
        from producer.publish import publish

        dispatch, trigger = publish, "manual"
    report = run_sweep(settings, dispatch=dispatch, trigger=trigger, progress=True)
    run = report.run
    if run.status == "skipped":
        click.echo(f"sweep {run.id} skipped: {run.message}")
        return
    click.echo(
        f"sweep {run.id}: found {run.found} files in {settings.incoming_dir}; "
        f"enqueued {run.enqueued}, failed {run.failed}, skipped {run.skipped} "
        "(already classified or a duplicate)"
    )
    for path, reason in report.failed[:20]:
        click.echo(f"  failed {path}: {reason}")
    if wait and not local and run.enqueued:
        _follow(settings, run.id, run.enqueued, timeout)
    _print_run(settings, run.id)


def _local_dispatch(settings):
    from tqdm import tqdm

    def dispatch(items) -> None:
        from worker.pipeline import load_classifier, process_batch

        clf = load_classifier(settings)
        with tqdm(total=len(items), desc="classifying", unit="img") as bar:
            for start in range(0, len(items), settings.batch_size):
                chunk = items[start : start + settings.batch_size]
                process_batch(chunk, clf, settings)
                bar.update(len(chunk))

    return dispatch


def _follow(settings, run_id: int, total: int, timeout: float) -> None:
    import time

    from tqdm import tqdm

    from models import SweepRun
    from refund_sorter.db import session_factory

    sessions = session_factory(settings.database_url)
    deadline = time.monotonic() + timeout
    with tqdm(total=total, desc="classified", unit="img") as bar:
        while True:
            with sessions() as session:
                run = session.get(SweepRun, run_id)
                bar.update(run.enqueued - run.pending - bar.n)
                if run.status != "running":
                    return
            if time.monotonic() > deadline:
                raise UserError(
                    f"sweep {run_id} still running after {timeout:.0f} s; "
                    "are the workers up? (celery -A worker worker)"
                )
            time.sleep(1.0)


def _print_run(settings, run_id: int) -> None:
    from models import SweepRun
    from refund_sorter.db import session_factory
    from refund_sorter.export import sweep_csv_path

    with session_factory(settings.database_url)() as session:
        run = session.get(SweepRun, run_id)
        click.echo(
            f"status {run.status}: {run.succeeded} classified, {run.failed} failed, "
            f"{run.skipped} skipped, {run.pending} still queued"
        )
        if run.status == "finished":
            click.echo(f"CSV: {sweep_csv_path(run, settings.export_dir)}")


@main.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="CSV file to write ('-' for standard output).",
)
@click.option("--sweep-run", type=int, help="Only this sweep run.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="Classified on or after (UTC).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Classified on or before (UTC).")
@click.option("--status", type=click.Choice(["ok", "failed"]), help="Only this status.")
@friendly
def export(out, sweep_run, since, until, status) -> None:
    """Export predictions from the SQL table to CSV (streamed, constant memory)."""
    from refund_sorter.config import get_settings
    from refund_sorter.db import check_schema, session_factory
    from refund_sorter.export import ExportFilter, write_csv

    settings = get_settings()
    check_schema(settings.database_url)
    flt = ExportFilter(
        sweep_run=sweep_run,
        since=since.date() if since else None,
        until=until.date() if until else None,
        status=status,
    )
    with session_factory(settings.database_url)() as session:
        if str(out) == "-":
            n = write_csv(session, flt, sys.stdout)
        else:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", newline="", encoding="utf-8") as fh:
                n = write_csv(session, flt, fh)
    click.echo(f"exported {n} rows to {out}", err=str(out) == "-")


@main.command()
@click.option("--last", default=10, show_default=True, help="How many runs to show.")
@friendly
def runs(last) -> None:
    """Show the most recent sweep runs and their counts."""
    from sqlalchemy import select

    from models import SweepRun
    from refund_sorter.config import get_settings
    from refund_sorter.crud import as_utc
    from refund_sorter.db import check_schema, session_factory

    settings = get_settings()
    check_schema(settings.database_url)
    with session_factory(settings.database_url)() as session:
        rows = session.scalars(select(SweepRun).order_by(SweepRun.id.desc()).limit(last)).all()
    click.echo(
        f"{'run':>5} {'started (UTC)':<17} {'status':<10} {'trigger':<7} "
        f"{'found':>6} {'ok':>6} {'failed':>6} {'skipped':>7} {'queued':>6}"
    )
    for r in rows:
        click.echo(
            f"{r.id:>5} {as_utc(r.started_at):%Y-%m-%d %H:%M} {r.status:<10} "
            f"{r.trigger:<7} {r.found:>6} {r.succeeded:>6} {r.failed:>6} "
            f"{r.skipped:>7} {r.pending:>6}" + (f"  {r.message}" if r.message else "")
        )


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command()
@friendly
def upgrade() -> None:
    """Create or migrate the tables to the latest schema (Alembic)."""
    from refund_sorter.config import get_settings
    from refund_sorter.db import safe_url
    from refund_sorter.db import upgrade as run_upgrade

    settings = get_settings()
    run_upgrade(settings.database_url)
    click.echo(f"database {safe_url(settings.database_url)} is at the latest schema")
