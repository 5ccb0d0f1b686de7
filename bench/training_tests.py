"""How far the training tests' figures sit above their bounds, over seeds and precisions. Run
by hand (never in CI), from the repository root:

    python bench/training_tests.py --seeds 10 --precision fp32 --precision bf16 [--json FILE]

For each seed and training precision it trains what the ``trained_model`` fixture trains
(``tests/conftest.py: train_small_model``) and prints the figures the tests assert on:
validation accuracy (tests/classifier/test_train.py), the evaluation report's accuracy in the
same precision (tests/classifier/test_evaluate.py), whether calibration reached its target,
and int8's agreement with fp32 (tests/classifier/test_quantize.py). The last line gives the
worst of each column: every bound a test asserts sits at least 0.1 beyond it.

On a CPU with AVX-512, ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` in front of the
command computes as an AVX2-only CPU does (there bf16 is emulated, and auto means fp32).
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import click
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import train_small_model

from cli import main

# Figures the tests want high; the worst is the lowest.
COLUMNS = ("val_main", "val_sub", "eval_main", "eval_sub", "int8_quantize", "int8_eval_sub")
COLUMNS += ("int8_same",)
# The mean gap between int8's and fp32's sub confidence: the worst is the highest.
GAP = "int8_gap"


def cli(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exit_code != 0:
        raise RuntimeError(result.output)
    return result.output


def measure(root: Path, seed: int, precision: str) -> dict:
    started = time.perf_counter()
    summary, held_out, _ = train_small_model(root, seed=seed, precision=precision)
    seconds = time.perf_counter() - started
    report = root / "eval.json"
    cli("evaluate", summary.model_path, held_out, "--report", report, "--device", "cpu",
        "--precision", precision)  # fmt: skip
    evaluated = json.loads(report.read_text())
    int8_model = root / "model-int8.pt"
    cli("quantize", summary.model_path, held_out.parent / "train", "--out", int8_model,
        "--photos", 64, "--check", 32)  # fmt: skip
    from classifier.checkpoint import load_checkpoint

    agreement = load_checkpoint(int8_model).int8["agreement"]
    cli("evaluate", int8_model, held_out, "--report", report, "--device", "cpu",
        "--precision", "int8")  # fmt: skip
    modes = json.loads(report.read_text())["modes"]
    same, gap = int8_against_fp32(int8_model, held_out)
    return {
        "seed": seed,
        "precision": precision,
        "val_main": summary.metrics["main_accuracy"],
        "val_sub": summary.metrics["sub_accuracy"],
        "eval_main": evaluated["main_accuracy"],
        "eval_sub": evaluated["sub_accuracy"],
        "int8_quantize": min(agreement.values()),
        "int8_eval_sub": modes["int8"]["sub_agreement"],
        "int8_same": same,
        GAP: gap,
        "best_epoch": summary.best_epoch,
        "target_reached": summary.calibration["target_reached"],
        "flagged": summary.calibration["flagged"],
        "train_seconds": round(seconds, 1),
    }


def int8_against_fp32(model: Path, held_out: Path) -> tuple[float, float]:
    """As tests/classifier/test_quantize.py compares them on the held-out images: the share
    with the same main and sub category, and the mean gap between the sub confidences."""
    from classifier.predict import Classifier
    from refund_sorter.images import open_rgb

    images = sorted(p for p in held_out.rglob("*.png") if "vest" not in str(p))
    fp32 = Classifier.from_path(model, "cpu", "fp32")
    int8 = Classifier.from_path(model, "cpu", "int8")
    tensors = [int8.preset(open_rgb(p)) for p in images]
    pairs = list(zip(fp32.predict_tensors(tensors), int8.predict_tensors(tensors), strict=True))
    same = sum((a.main, a.sub) == (b.main, b.sub) for a, b in pairs) / len(pairs)
    gap = sum(abs(a.sub_confidence - b.sub_confidence) for a, b in pairs) / len(pairs)
    return same, round(gap, 4)


@click.command()
@click.option("--seeds", default=10, show_default=True, help="Seeds 0..N-1 of each precision.")
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    default=("fp32", "bf16"),
    show_default=True,
    help="Training precision (repeat the option for several).",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write rows here.")
def run(seeds: int, precisions: tuple[str, ...], json_path: Path | None) -> None:
    """Train the tests' small model with each seed in each precision; print a table."""
    header = ["precision", "seed", *COLUMNS, GAP, "best_epoch", "target_reached"]
    header.append("train_seconds")
    click.echo(" ".join(f"{h:>14}" for h in header))
    rows = []
    for precision in precisions:
        for seed in range(seeds):
            with tempfile.TemporaryDirectory() as tmp:
                row = measure(Path(tmp), seed, precision)
            rows.append(row)
            click.echo(" ".join(f"{row[h]!s:>14}" for h in header))
    worst = {c: min(r[c] for r in rows) for c in COLUMNS}
    worst[GAP] = max(r[GAP] for r in rows)
    click.echo("worst: " + ", ".join(f"{c} {v:.4f}" for c, v in worst.items()))
    if json_path:
        json_path.write_text(json.dumps({"rows": rows, "worst": worst}, indent=1) + "\n")


if __name__ == "__main__":
    run()
