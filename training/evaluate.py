"""Scores, thresholds and statistics for one trained model (best or last)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from service.manifest import ModelEntry, SplitMetrics
from service.metrics import pr_curves, split_metrics
from training.threshold_search import f1_thresholds, target_precision_thresholds, target_recall_thresholds

log = logging.getLogger(__name__)


@dataclass
class Evaluated:
    """Everything the manifest and the inspect tools need about one model."""

    scores: dict[str, np.ndarray]  # split -> (n, L) scores of this model
    oof: np.ndarray | None  # (n_train, L) out-of-fold scores, when folds were used
    entry: ModelEntry
    curves: dict[str, dict]  # split -> pr_curves(...)


def choose_threshold_scores(source: str, train: np.ndarray, oof: np.ndarray | None, val: np.ndarray):
    """The scores (and matching split) that thresholds are fitted on."""
    if source == "oof":
        if oof is not None:
            return oof, "train"
        log.warning("too few train images for out-of-fold scores: thresholds fitted on train scores")
        return train, "train"
    return (train, "train") if source == "train" else (val, "validation")


def evaluate_model(
    *,
    file: str,
    epoch: int,
    val_loss: float,
    labels: list[str],
    y: dict[str, np.ndarray],
    scores: dict[str, np.ndarray],
    oof: np.ndarray | None,
    losses: dict[str, float],
    threshold_source: str,
    min_positives: int,
) -> Evaluated:
    fit_scores, fit_split = choose_threshold_scores(
        threshold_source, scores["train"], oof, scores["validation"]
    )
    fit_y = y[fit_split]
    best_f1 = f1_thresholds(fit_y, fit_scores, labels, min_positives=min_positives)
    high_p = target_precision_thresholds(fit_y, fit_scores, labels, target=0.9)
    high_r = target_recall_thresholds(fit_y, fit_scores, labels, target=0.9)
    thresholds = np.asarray(best_f1.values, dtype=np.float64)
    metrics: dict[str, SplitMetrics] = {}
    curves: dict[str, dict] = {}
    for split in ("train", "validation"):
        metrics[split] = split_metrics(y[split], scores[split], thresholds, labels, loss=losses.get(split))
        curves[split] = pr_curves(y[split], scores[split], labels, thresholds)
    actual_source = threshold_source if (threshold_source != "oof" or oof is not None) else "train"
    entry = ModelEntry(
        file=file,
        epoch=epoch,
        val_loss=val_loss,
        thresholds=[float(v) for v in thresholds],
        threshold_source=actual_source,
        threshold_fallbacks=dict(best_f1.fallbacks),
        profiles={
            "high_precision": [float(v) for v in high_p.values],
            "high_recall": [float(v) for v in high_r.values],
        },
        metrics=metrics,
    )
    return Evaluated(scores=scores, oof=oof, entry=entry, curves=curves)


def bce(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
