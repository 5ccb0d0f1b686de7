"""How far a confidence can be trusted: temperature scaling, the expected calibration error,
and the review threshold that leaves only photos right often enough unflagged.

One temperature, on the joint. The workers report the joint probability of the sub category
and its summed probability per main category, so that distribution is what is calibrated:
its log scores ``log P_main(m(s)) + log P_sub(s)`` are divided by one temperature T. That
is the same as dividing both heads' logits by T (the per-row constants cancel in the
softmax), it never changes which category wins, so every accuracy measured stays true, and
one parameter is what a few hundred held-out photos can fit without overfitting. T is found
by minimising the negative log-likelihood of the true sub categories (LBFGS on log T, over
logits collected once).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from classifier.predict import decide, joint_log_scores, joint_probabilities

ECE_BINS = 15
# A calibration set the model gets entirely right has no best temperature: the likelihood
# keeps growing as T falls. T stays within these bounds, where float32 softmax is meaningful.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# The thresholds every coverage table lists, besides each distinct confidence: 0.00..1.00.
GRID = tuple(i / 100 for i in range(101))


@dataclass
class Outcomes:
    """Per image: what the model reported and the truth, as the workers would report it."""

    sub_pred: np.ndarray
    sub_confidence: np.ndarray
    main_pred: np.ndarray
    main_confidence: np.ndarray
    sub_true: np.ndarray
    main_true: np.ndarray

    @property
    def sub_correct(self) -> np.ndarray:
        return self.sub_pred == self.sub_true

    @property
    def main_correct(self) -> np.ndarray:
        return self.main_pred == self.main_true


def outcomes(
    main_logits: torch.Tensor,
    sub_logits: torch.Tensor,
    sub_labels: torch.Tensor,
    sub_to_main: torch.Tensor,
    n_main: int,
    temperature: float = 1.0,
) -> Outcomes:
    """Decide every image from its logits, as inference does at ``temperature``."""
    sub_to_main = sub_to_main.cpu()
    joint = joint_probabilities(main_logits.cpu(), sub_logits.cpu(), sub_to_main, temperature)
    sub_idx, sub_conf, main_idx, main_conf = decide(joint, sub_to_main, n_main)
    labels = sub_labels.cpu()
    return Outcomes(
        sub_idx.numpy(),
        sub_conf.double().numpy(),
        main_idx.numpy(),
        main_conf.double().numpy(),
        labels.numpy(),
        sub_to_main[labels].numpy(),
    )


def fit_temperature(
    main_logits: torch.Tensor,
    sub_logits: torch.Tensor,
    sub_labels: torch.Tensor,
    sub_to_main: torch.Tensor,
) -> float:
    """The temperature that minimises the joint's negative log-likelihood on these images."""
    if len(sub_labels) == 0:
        return 1.0
    scores = joint_log_scores(main_logits.cpu(), sub_logits.cpu(), sub_to_main.cpu()).double()
    labels = sub_labels.cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(scores / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        return 1.0
    return min(max(temperature, TEMPERATURE_BOUNDS[0]), TEMPERATURE_BOUNDS[1])


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list:
    """Equal-width confidence bins (lower, upper]: how many images, their mean confidence
    and their accuracy (None for an empty bin)."""
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Sum over the bins of (share of images) x |accuracy - mean confidence|; 0 for none."""
    n = len(confidence)
    return sum(
        row["count"] / n * abs(row["accuracy"] - row["confidence"])
        for row in reliability_bins(confidence, correct, bins)
        if row["count"]
    )


def calibration_report(raw: Outcomes, scaled: Outcomes, bins: int = ECE_BINS) -> dict:
    """ECE and reliability bins per level, before (``raw``) and after temperature scaling."""
    report: dict = {"bins": bins}
    for level in ("main", "sub"):
        report[level] = {}
        for when, seen in (("before", raw), ("after", scaled)):
            conf = getattr(seen, f"{level}_confidence")
            correct = getattr(seen, f"{level}_correct")
            report[level][f"ece_{when}"] = expected_calibration_error(conf, correct, bins)
            report[level][f"reliability_{when}"] = reliability_bins(conf, correct, bins)
    return report


def coverage_table(seen: Outcomes, thresholds=None) -> list[dict]:
    """For each threshold (by default 0.00..1.00 in steps of 0.01 and every distinct sub
    confidence), the share of photos flagged for review (sub confidence below it), how many
    are kept, and the main and sub accuracy of those kept (None when none is)."""
    if thresholds is None:
        thresholds = set(GRID) | {float(c) for c in seen.sub_confidence}
    thresholds = np.array(sorted(thresholds), dtype=np.float64)
    n = len(seen.sub_confidence)
    order = np.argsort(seen.sub_confidence, kind="stable")
    conf = seen.sub_confidence[order]
    # right[k]: how many of the photos from the k-th least confident on are right.
    right = {
        level: np.concatenate([np.cumsum(correct[order][::-1])[::-1], [0]])
        for level, correct in (("main", seen.main_correct), ("sub", seen.sub_correct))
    }
    rows = []
    for threshold, flagged in zip(
        thresholds, np.searchsorted(conf, thresholds, side="left"), strict=True
    ):
        kept = n - int(flagged)
        rows.append(
            {
                "threshold": float(threshold),
                "flagged": int(flagged) / n if n else 0.0,
                "kept": kept,
                "main_accuracy": int(right["main"][flagged]) / kept if kept else None,
                "sub_accuracy": int(right["sub"][flagged]) / kept if kept else None,
            }
        )
    return rows


def choose_review_threshold(table: list[dict], target: float) -> dict | None:
    """The row of the smallest threshold whose kept photos are at least ``target`` right on
    both levels, or None when no threshold that keeps a photo gets there."""
    for row in sorted(table, key=lambda r: r["threshold"]):
        if row["kept"] and min(row["main_accuracy"], row["sub_accuracy"]) >= target - 1e-12:
            return row
    return None
