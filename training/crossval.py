"""Cross-validation results: one JSON file per fold, and their summary.

``refund-sorter train DATA --folds K --fold I --out DIR/fold-I.pt`` trains on every fold of
DATA but fold I, validates and calibrates on fold I, and writes ``DIR/fold-I.cv.json`` beside
the model. Folds run one at a time, in any order, on any machine. ``refund-sorter
cv-summary DIR`` then prints each fold's figures and their mean, and can write them as JSON.
The folds themselves are dealt by ``training.splits.stratified_folds``.

Torch-free: summarising reads JSON only.
"""

import json
import statistics
from pathlib import Path

from refund_sorter.atomic import atomic_write
from refund_sorter.errors import UserError

KIND = "refund-sorter-cv-fold/1"
SUFFIX = ".cv.json"
# What may differ between the folds of one cross-validation: where each ran, and which fold.
PER_RUN = {"fold", "device"}


def fold_result_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(SUFFIX)


def write_fold_result(model_path: Path, result: dict) -> Path:
    """Write one fold's figures beside its model (atomically) and return the file's path."""
    path = fold_result_path(model_path)
    with atomic_write(path) as fh:
        json.dump({"kind": KIND, **result}, fh, indent=2)
    return path


def read_fold_results(paths: list[Path]) -> list[dict]:
    """The fold results in ``paths``: files, or folders whose ``*.cv.json`` files are read."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.glob(f"*{SUFFIX}"))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"not found: {path}")
    if not files:
        raise UserError(f"no fold results (*{SUFFIX}) in {', '.join(map(str, paths))}")
    results = []
    for file in files:
        try:
            result = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {file}: {exc}") from None
        if not isinstance(result, dict) or result.get("kind") != KIND:
            raise UserError(f"{file} is not a fold result of refund-sorter train --folds")
        results.append({**result, "file": str(file)})
    return results


def summarise(results: list[dict]) -> dict:
    """Per-fold figures and their mean and standard deviation. The folds must come from one
    cross-validation: as many images, the same folds, seed and recipe, each fold once."""
    first = results[0]
    for result in results[1:]:
        # Folds may run on other machines, where the data folder has another path: the
        # number of images it holds stands in for it.
        for key in ("folds", "seed", "images"):
            if _get(result, key) != _get(first, key):
                raise UserError(
                    f"{result['file']} has {key} {_get(result, key)!r}, {first['file']} has "
                    f"{_get(first, key)!r}: not folds of one cross-validation"
                )
        differ = sorted(
            key
            for key in set(result["recipe"]) | set(first["recipe"])
            if key not in PER_RUN and result["recipe"].get(key) != first["recipe"].get(key)
        )
        if differ:
            raise UserError(
                f"{result['file']} and {first['file']} were trained with other settings: "
                + ", ".join(
                    f"{key} {result['recipe'].get(key)!r} vs {first['recipe'].get(key)!r}"
                    for key in differ
                )
            )
    by_fold: dict[int, dict] = {}
    for result in results:
        if result["fold"] in by_fold:
            raise UserError(
                f"fold {result['fold']} appears twice: {by_fold[result['fold']]['file']} "
                f"and {result['file']}"
            )
        by_fold[result["fold"]] = result
    rows = [_row(by_fold[fold]) for fold in sorted(by_fold)]
    columns = [key for key in rows[0] if key not in ("fold", "file")]
    mean, std = {}, {}
    for key in columns:
        values = [row[key] for row in rows if row[key] is not None]
        mean[key] = statistics.fmean(values) if values else None
        std[key] = statistics.stdev(values) if len(values) > 1 else None
    return {
        "data_dirs": sorted({result["data_dir"] for result in results}),
        "folds": first["folds"],
        "seed": first["seed"],
        "recipe": {k: v for k, v in first["recipe"].items() if k not in PER_RUN},
        "missing_folds": [f for f in range(1, first["folds"] + 1) if f not in by_fold],
        "per_fold": rows,
        "mean": mean,
        "std": std,
    }


def _get(result: dict, key: str):
    return result["n_train"] + result["n_val"] if key == "images" else result[key]


def _row(result: dict) -> dict:
    cal = result.get("calibration") or {}
    ece = cal.get("ece", {})
    return {
        "fold": result["fold"],
        "file": result["file"],
        "n_val": result["n_val"],
        # The last epoch's accuracy is the fair one: the best epoch is picked on the same fold.
        "main_accuracy": result["last"]["main_accuracy"],
        "sub_accuracy": result["last"]["sub_accuracy"],
        "best_main_accuracy": result["best"]["main_accuracy"],
        "best_sub_accuracy": result["best"]["sub_accuracy"],
        "best_epoch": result["best_epoch"],
        "temperature": cal.get("temperature"),
        "sub_ece_before": ece.get("sub", {}).get("before"),
        "sub_ece_after": ece.get("sub", {}).get("after"),
        "review_threshold": cal.get("review_threshold"),
        "flagged": cal.get("flagged"),
    }
