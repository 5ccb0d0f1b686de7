"""Evaluation with the deterministic eval preprocessing: accuracy per level, per-class
precision and recall, both confusion matrices, how well the confidences are calibrated,
what each review threshold would flag, and each precision mode's accuracy, agreement with
fp32 and speed (JSON), and PNGs of the matrices, the reliability diagram and the coverage
against accuracy. ``answer_folder`` runs two models on the same photos of a labelled folder
(``refund-sorter model compare --data``, whose figures ``review.comparison`` draws)."""

import json
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch

from classifier.calibration import (
    Outcomes,
    calibration_report,
    choose_review_threshold,
    coverage_table,
    outcomes,
)
from classifier.data import load_images
from classifier.predict import Classification, Classifier
from classifier.runtime import OPENVINO
from refund_sorter.images import sha256_file
from refund_sorter.taxonomy import read_layout, relabel

DEFAULT_TARGET = 0.97  # for a model that records no review target of its own


def plot_paths(report_path: Path) -> dict[str, Path]:
    """The PNGs written beside the JSON report."""
    report_path = Path(report_path)
    return {
        "confusion": report_path.with_suffix(".png"),
        "reliability": report_path.with_name(f"{report_path.stem}-reliability.png"),
        "coverage": report_path.with_name(f"{report_path.stem}-coverage.png"),
    }


def confusion(truth: list[int], pred: list[int], n: int) -> list[list[int]]:
    matrix = [[0] * n for _ in range(n)]
    for t, p in zip(truth, pred, strict=True):
        matrix[t][p] += 1
    return matrix


def per_class(matrix: list[list[int]], labels: list[str]) -> dict:
    out = {}
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        out[label] = {
            "precision": tp / predicted if predicted else 0.0,
            "recall": tp / support if support else 0.0,
            "support": support,
        }
    return out


def evaluate(
    model_path: Path,
    data_dir: Path,
    report_path: Path,
    batch_size: int = 64,
    device: str = "auto",
    mapping: Path | None = None,
    precision: str = "auto",
    runtime: str | None = None,
) -> dict:
    clf = Classifier.from_path(model_path, device, precision, runtime=runtime)
    tax = clf.taxonomy
    files, unknown = relabel(read_layout(data_dir, mapping, min_subs=1), tax)
    data = load_images(files, clf.preset, clf.checkpoint.image_size, "decoding images")
    main_logits, sub_logits = clf.logits(data.images, batch_size)
    args = (main_logits, sub_logits, data.labels, clf.sub_to_main, len(tax.main))
    seen = outcomes(*args, clf.temperature)  # what the workers report
    sub_pred, main_pred = seen.sub_pred.tolist(), seen.main_pred.tolist()
    sub_true = data.labels.tolist()
    main_true = [tax.sub_to_main[s] for s in sub_true]
    sub_labels = [f"{tax.main[m]}/{s}" for s, m in zip(tax.sub, tax.sub_to_main, strict=True)]
    main_matrix = confusion(main_true, main_pred, len(tax.main))
    sub_matrix = confusion(sub_true, sub_pred, len(tax.sub))
    n = len(sub_true)
    report = {
        "model": str(model_path),
        "model_version": clf.version,
        "data_dir": str(data_dir),
        "n_images": n,
        "main_accuracy": sum(t == p for t, p in zip(main_true, main_pred, strict=True)) / n
        if n
        else 0.0,
        "sub_accuracy": sum(t == p for t, p in zip(sub_true, sub_pred, strict=True)) / n
        if n
        else 0.0,
        "per_class": {
            "main": per_class(main_matrix, list(tax.main)),
            "sub": per_class(sub_matrix, sub_labels),
        },
        "confusion": {
            "main": {"labels": list(tax.main), "matrix": main_matrix},
            "sub": {"labels": sub_labels, "matrix": sub_matrix},
        },
        "unknown_folders": unknown,
        "skipped": [{"path": str(p), "reason": r} for p, r in data.skipped],
        "device": str(clf.device),
        "precision": clf.precision,
        "torch_threads": torch.get_num_threads(),
        "calibration": {
            "temperature": clf.temperature,
            **calibration_report(outcomes(*args), seen),
        },
        "review": review_report(clf, seen),
        "modes": compare_modes(clf, data.images, main_true, sub_true, batch_size),
    }
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2))
    plots = plot_paths(report_path)
    plot_confusion(report, plots["confusion"])
    plot_reliability(report, plots["reliability"])
    plot_coverage(report, plots["coverage"])
    return report


def predict_all(clf: Classifier, images: torch.Tensor, batch_size: int):
    """(main indices, sub indices) that ``clf`` reports for uint8 ``images``."""
    tax = clf.taxonomy
    main_pred, sub_pred = [], []
    for start in range(0, len(images), batch_size):
        for p in clf.predict_tensors(images[start : start + batch_size]):
            sub_pred.append(tax.index_of(p.main, p.sub))
            main_pred.append(tax.main.index(p.main))
    return main_pred, sub_pred


def _share(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a) if a else 0.0


def compare_modes(
    clf: Classifier, images: torch.Tensor, main_true, sub_true, batch_size: int
) -> dict:
    """Accuracy, top-1 agreement with fp32 and speed of every precision this device runs
    for this model in its runtime (int8 only when the model carries an int8 network for
    it)."""
    cpu = clf.device.type == "cpu"
    ckpt = clf.checkpoint
    int8 = ckpt.openvino_int8 if clf.runtime == OPENVINO else ckpt.int8
    modes = ["fp32", "bf16"] + (["int8"] if cpu and int8 else [])
    modes += [] if cpu else ["fp16"]
    out, reference = {}, None
    for mode in modes:
        model = Classifier(ckpt, str(clf.device), mode, runtime=clf.runtime)
        predict_all(model, images[:batch_size], batch_size)  # warm-up
        start = time.perf_counter()
        main_pred, sub_pred = predict_all(model, images, batch_size)
        seconds = time.perf_counter() - start
        reference = reference or (main_pred, sub_pred)
        out[mode] = {
            "main_accuracy": _share(main_pred, main_true),
            "sub_accuracy": _share(sub_pred, sub_true),
            "main_agreement": _share(main_pred, reference[0]),
            "sub_agreement": _share(sub_pred, reference[1]),
            "images_per_second": len(images) / seconds if seconds else 0.0,
        }
    return out


def review_report(clf: Classifier, seen: Outcomes) -> dict:
    """What the model's review threshold flags on these photos, and what every other
    threshold would: the share flagged and the accuracy of the photos kept."""
    threshold = clf.review_threshold
    target = clf.checkpoint.meta.get("calibration", {}).get("review_target", DEFAULT_TARGET)
    table = coverage_table(seen)
    reaching = choose_review_threshold(table, target)
    return {
        "threshold": threshold,
        "at_threshold": coverage_table(seen, [threshold])[0],
        "target": target,
        # The smallest threshold that reaches the target on these photos, for comparison.
        "threshold_reaching_target": reaching["threshold"] if reaching else None,
        "table": table,
    }


def plot_confusion(report: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1, 1.6]})
    for ax, level in zip(axes, ("main", "sub"), strict=True):
        labels = report["confusion"][level]["labels"]
        matrix = report["confusion"][level]["matrix"]
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        top = max((max(row) for row in matrix), default=0)
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if value:
                    ax.text(
                        j,
                        i,
                        value,
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if value > top / 2 else "black",
                    )
        ax.set_title(f"{level} accuracy {report[f'{level}_accuracy']:.3f}")
    fig.suptitle(f"model {report['model_version']} on {report['n_images']} images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(report: dict, path: Path) -> None:
    """Accuracy against mean confidence per bin, per level, before and after the model's
    temperature: a calibrated model follows the diagonal."""
    plt = _pyplot()
    cal = report["calibration"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, level in zip(axes, ("main", "sub"), strict=True):
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        for when, style in (("before", "o:"), ("after", "s-")):
            bins = [b for b in cal[level][f"reliability_{when}"] if b["count"]]
            ax.plot(
                [b["confidence"] for b in bins],
                [b["accuracy"] for b in bins],
                style,
                label=f"{when} (ECE {cal[level][f'ece_{when}']:.3f})",
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"{level} confidence (mean per bin, {cal['bins']} bins)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{level} category")
        ax.legend(loc="upper left")
    fig.suptitle(
        f"model {report['model_version']}: reliability before and after temperature "
        f"{cal['temperature']:.3f}, {report['n_images']} images"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_coverage(report: dict, path: Path) -> None:
    """Accuracy of the photos not flagged for review against the share kept, and the share
    flagged against the threshold; the model's threshold and target marked."""
    plt = _pyplot()
    review = report["review"]
    rows = [row for row in review["table"] if row["kept"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for level in ("main", "sub"):
        left.plot(
            [1 - row["flagged"] for row in rows],
            [row[f"{level}_accuracy"] for row in rows],
            label=f"{level} accuracy of the photos kept",
        )
    left.axhline(review["target"], color="grey", linestyle="--", label=f"target {review['target']}")
    at = review["at_threshold"]
    left.axvline(
        1 - at["flagged"],
        color="red",
        linewidth=1,
        label=f"model's threshold {at['threshold']:.2f}",
    )
    left.set_xlim(0, 1.02)
    left.set_ylim(top=1.005)
    left.set_xlabel("share of photos kept (not flagged for review)")
    left.set_ylabel("accuracy")
    left.legend(loc="lower left")
    table = review["table"]
    right.plot([row["threshold"] for row in table], [row["flagged"] for row in table])
    right.axvline(at["threshold"], color="red", linewidth=1)
    right.set_xlabel("review threshold (sub confidence)")
    right.set_ylabel("share of photos flagged for review")
    fig.suptitle(f"model {report['model_version']} on {report['n_images']} images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class ModelAnswers:
    """One model's answers on a folder's photos, in their order, and its speed on them."""

    version: str
    precision: str
    review_threshold: float
    answers: list[Classification]
    images_per_second: float


@dataclass
class FolderAnswers:
    """Several models' answers on the same photos of a labelled folder."""

    truth: list[tuple[str, str]]  # (main, sub) of each photo answered
    models: dict[str, ModelAnswers]  # by the name the caller gave each model
    left_out: int  # photos whose content is among ``leave_out`` (learned by a model)
    not_in_categories: dict[str, int] = field(default_factory=dict)  # main/sub -> photos
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def answer_folder(
    models: dict[str, tuple[Path, float]],
    data_dir: Path,
    *,
    leave_out: Collection[str] = (),
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    mapping: Path | None = None,
    runtime: str | None = None,
) -> FolderAnswers:
    """Run each model (name -> (checkpoint, review threshold)) on the photos of ``data_dir``
    (laid out ``<main>/<sub>/<image>``) that every model has a category for, that every model
    can read, and whose content hash is not in ``leave_out``. Each model's images per second
    are measured on the same photos, one model after the other, after a warm-up batch."""
    classifiers = {
        name: Classifier.from_path(path, device, precision, threshold, runtime)
        for name, (path, threshold) in models.items()
    }
    layout = read_layout(data_dir, mapping, min_subs=1)
    tax = layout.taxonomy
    files, not_in_categories, left_out = [], {}, 0
    for path, index in layout.files:
        main, sub = tax.main[tax.sub_to_main[index]], tax.sub[index]
        if any(c.taxonomy.index_of(main, sub) is None for c in classifiers.values()):
            not_in_categories[f"{main}/{sub}"] = not_in_categories.get(f"{main}/{sub}", 0) + 1
        elif leave_out and sha256_file(path) in leave_out:
            left_out += 1
        else:
            files.append((path, (main, sub)))
    # Each model decodes at its own image size; a photo counts only if every model read it.
    numbered = [(path, i) for i, (path, _) in enumerate(files)]
    loaded, unreadable = {}, {}
    for name, clf in classifiers.items():
        data = load_images(numbered, clf.preset, clf.checkpoint.image_size, f"decoding for {name}")
        loaded[name] = data
        unreadable.update(data.skipped)
    readable = set(range(len(files)))
    for data in loaded.values():
        readable &= set(data.labels.tolist())
    kept = sorted(readable)
    answered = {}
    for name, clf in classifiers.items():
        data = loaded[name]
        rows = {int(i): row for row, i in enumerate(data.labels.tolist())}
        images = data.images[[rows[i] for i in kept]] if kept else data.images[:0]
        if len(images):
            clf.predict_tensors(images[:batch_size])  # warm-up: not timed
        start = time.perf_counter()
        answers = [
            a
            for at in range(0, len(images), batch_size)
            for a in clf.predict_tensors(images[at : at + batch_size])
        ]
        seconds = time.perf_counter() - start
        answered[name] = ModelAnswers(
            clf.version,
            clf.precision,
            clf.review_threshold,
            answers,
            len(images) / seconds if seconds > 0 else 0.0,
        )
    return FolderAnswers(
        [files[i][1] for i in kept],
        answered,
        left_out,
        not_in_categories,
        sorted(unreadable.items()),
    )
