"""Multi-label metrics in pure numpy: correctness, split statistics, PR curves and AP.

Conventions shared by every function here:

- ``y_true`` is (n, L) bool or 0/1, ``y_score`` is (n, L) float in [0, 1], ``thresholds`` is (L,).
- A label is predicted when ``score >= threshold`` (the same rule the service applies).
- 0/0 is 0.0 (scikit-learn's ``zero_division=0``): a label never predicted has precision 0, a label
  with no positive has recall 0, and F1 is 0 when both are.
- Average precision is scikit-learn's step-wise definition and is ``None`` for a label without positives
  (scikit-learn returns a meaningless 0 there); ``map`` averages the labels that have one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from service.manifest import LabelMetrics, SplitMetrics

logger = logging.getLogger(__name__)

Counts = tuple[np.ndarray, np.ndarray, np.ndarray]


# --- validation and counting -------------------------------------------------------------------


def _as_bool(y_true: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true)
    if y.dtype != bool:
        if not ((y == 0) | (y == 1)).all():
            raise ValueError("y_true must be bool or 0/1")
        y = y.astype(bool)
    return y


def _as_scores(y_score: np.ndarray) -> np.ndarray:
    s = np.asarray(y_score, dtype=np.float64)
    if s.size and not (np.isfinite(s).all() and s.min() >= 0.0 and s.max() <= 1.0):
        raise ValueError("y_score must be finite and in [0, 1]")
    return s


def check_multilabel(
    y_true: np.ndarray,
    y_score: np.ndarray,
    thresholds: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate and convert (n, L) arrays, and (L,) thresholds / labels when given."""
    t, s = _as_bool(y_true), _as_scores(y_score)
    if t.ndim != 2 or t.shape != s.shape or t.shape[0] == 0:
        raise ValueError(f"y_true {t.shape} and y_score {s.shape} must be the same non-empty (n, L)")
    if labels is not None and len(labels) != t.shape[1]:
        raise ValueError(f"{len(labels)} labels for {t.shape[1]} columns")
    if thresholds is None:
        return t, s, None
    th = np.asarray(thresholds, dtype=np.float64)
    if th.shape != (t.shape[1],):
        raise ValueError(f"thresholds {th.shape} must be ({t.shape[1]},)")
    return t, s, th


def check_binary(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert one label's (n,) arrays."""
    t, s = _as_bool(y_true), _as_scores(y_score)
    if t.ndim != 1 or t.shape != s.shape or t.size == 0:
        raise ValueError(f"y_true {t.shape} and y_score {s.shape} must be the same non-empty (n,)")
    return t, s


def counts_at_scores(y_true: np.ndarray, y_score: np.ndarray) -> Counts:
    """Cumulative true / false positives when cutting at each distinct score, highest score first.

    Returns ``(scores, tps, fps)``, each (k,) for k distinct scores: predicting ``score >= scores[i]``
    gives ``tps[i]`` true and ``fps[i]`` false positives. Ties share one cut. O(n log n).
    """
    order = np.argsort(y_score)[::-1]
    s, t = y_score[order], y_true[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # last index of each tie group
    tps = np.cumsum(t)[last]
    return s[last], tps, last + 1 - tps


def _ratio(num: np.ndarray | int, den: np.ndarray | int) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)  # 0/0 = 0


# --- binary curves -------------------------------------------------------------------------------


def precision_recall_curve(
    y_true: np.ndarray, y_score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall pairs at every distinct score, as ``sklearn.metrics.precision_recall_curve``.

    ``y_true`` (n,) bool, ``y_score`` (n,). Returns ``precision`` and ``recall`` (k + 1,) with recall
    decreasing, and ``thresholds`` (k,) increasing; the last point (precision 1, recall 0) has no
    threshold. Without positives, recall is 1 everywhere (scikit-learn's choice) and a warning is logged.

    >>> p, r, t = precision_recall_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    >>> p.round(3).tolist(), r.tolist(), t.tolist()
    ([0.5, 0.667, 0.5, 1.0, 1.0], [1.0, 1.0, 0.5, 0.5, 0.0], [0.1, 0.35, 0.4, 0.8])
    """
    return _pr_curve(*check_binary(y_true, y_score))


def _pr_curve(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores, tps, fps = counts_at_scores(t, s)
    precision = tps / (tps + fps)  # each cut holds at least one sample: never 0/0
    if tps[-1] == 0:
        logger.warning("no positive in y_true: recall is set to 1 for all thresholds")
        recall = np.ones(tps.shape)
    else:
        recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], scores[::-1]


def _ap(precision: np.ndarray, recall: np.ndarray) -> float:
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))  # max: -0.0 from rounding


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """Step-wise average precision, as ``sklearn.metrics.average_precision_score``; None without positives.

    ``y_true`` (n,) bool, ``y_score`` (n,). AP = sum over cuts of (R_i - R_{i-1}) * P_i.

    >>> average_precision(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.8333333333333333
    """
    t, s = check_binary(y_true, y_score)
    if not t.any():
        return None
    return _ap(*_pr_curve(t, s)[:2])


# --- correctness ---------------------------------------------------------------------------------


def label_correct(y_true: np.ndarray, y_score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n, L) bool: a positive at or above its threshold, or a negative below it, is correct.

    >>> label_correct(np.array([[1], [1], [0], [0]]), np.array([[0.9], [0.2], [0.7], [0.1]]), np.array([0.5]))
    array([[ True],
           [False],
           [False],
           [ True]])
    """
    t, s, th = check_multilabel(y_true, y_score, thresholds)
    return (s >= th) == t


def image_correct(y_true: np.ndarray, y_score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n,) bool: an image is correct only if every one of its labels is correct.

    >>> y_true = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    >>> y_score = np.array([[0.9, 0.1], [0.8, 0.3], [0.2, 0.6], [0.4, 0.7]])
    >>> image_correct(y_true, y_score, np.array([0.5, 0.5]))
    array([ True, False, False,  True])
    """
    return label_correct(y_true, y_score, thresholds).all(axis=1)


# --- split statistics ----------------------------------------------------------------------------


def split_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    thresholds: np.ndarray,
    labels: Sequence[str],
    *,
    loss: float | None = None,
) -> SplitMetrics:
    """The manifest's statistics for one split at the given per-label thresholds.

    ``y_true`` (n, L), ``y_score`` (n, L), ``thresholds`` (L,), ``labels`` L names. ``accuracy`` is the
    exact-match ratio, ``label_accuracy`` is 1 - Hamming loss, micro scores pool every (image, label)
    decision; 0/0 = 0.0. ``loss`` is passed through.

    >>> y_true = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    >>> y_score = np.array([[0.9, 0.1], [0.8, 0.3], [0.2, 0.6], [0.4, 0.7]])
    >>> m = split_metrics(y_true, y_score, np.array([0.5, 0.5]), ["cat", "dog"])
    >>> m.accuracy, m.label_accuracy, m.micro_precision, m.micro_recall, m.per_label["dog"].ap
    (0.5, 0.75, 0.75, 0.75, 0.8333333333333333)
    """
    t, s, th = check_multilabel(y_true, y_score, thresholds, labels)
    pred = s >= th
    tp, fp, fn = (pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0)
    aps = [average_precision(t[:, j], s[:, j]) for j in range(t.shape[1])]
    per_label = {
        name: LabelMetrics(
            support=int(tp[j] + fn[j]),
            precision=float(_ratio(tp[j], tp[j] + fp[j])),
            recall=float(_ratio(tp[j], tp[j] + fn[j])),
            f1=float(_ratio(2 * tp[j], 2 * tp[j] + fp[j] + fn[j])),
            ap=aps[j],
        )
        for j, name in enumerate(labels)
    }
    known = [a for a in aps if a is not None]
    all_tp, all_fp, all_fn = int(tp.sum()), int(fp.sum()), int(fn.sum())
    correct = pred == t
    return SplitMetrics(
        images=int(t.shape[0]),
        accuracy=float(correct.all(axis=1).mean()),
        label_accuracy=float(correct.mean()),
        micro_precision=float(_ratio(all_tp, all_tp + all_fp)),
        micro_recall=float(_ratio(all_tp, all_tp + all_fn)),
        micro_f1=float(_ratio(2 * all_tp, 2 * all_tp + all_fp + all_fn)),
        map=float(np.mean(known)) if known else None,
        loss=loss,
        per_label=per_label,
    )


# --- PR curves for reports -----------------------------------------------------------------------


def _keep_indices(m: int, max_points: int, must: list[int]) -> np.ndarray:
    """At most ``max_points`` evenly spread indices of 0..m-1, always with both ends and ``must``."""
    if m <= max_points:
        return np.arange(m)
    spread = np.round(np.linspace(0, m - 1, max_points - len(must))).astype(int)
    return np.union1d(spread, np.asarray(must, dtype=int))


def _operating_point(pred: np.ndarray, t: np.ndarray, threshold: float | None) -> dict:
    tp, fp, fn = int((pred & t).sum()), int((pred & ~t).sum()), int((~pred & t).sum())
    return {
        "threshold": threshold,
        "precision": float(_ratio(tp, tp + fp)),
        "recall": float(_ratio(tp, tp + fn)),
        "f1": float(_ratio(2 * tp, 2 * tp + fp + fn)),
    }


def _curve(t: np.ndarray, s: np.ndarray, pred: np.ndarray, threshold: float | None, max_points: int) -> dict:
    precision, recall, cuts = _pr_curve(t, s)
    must = [] if threshold is None else [int(np.searchsorted(cuts, threshold, side="left"))]
    keep = _keep_indices(precision.size, max_points, must)
    return {
        "precision": precision[keep].tolist(),
        "recall": recall[keep].tolist(),
        # the last point (nothing predicted) has no threshold
        "thresholds": [float(cuts[i]) if i < cuts.size else None for i in keep],
        "ap": _ap(precision, recall) if t.any() else None,
        "operating_point": _operating_point(pred, t, threshold),
    }


def pr_curves(
    y_true: np.ndarray,
    y_score: np.ndarray,
    labels: Sequence[str],
    thresholds: np.ndarray,
    *,
    max_points: int = 200,
) -> dict:
    """JSON-ready PR curves: ``{"all": curve, "per_label": {label: curve}}``.

    ``y_true`` (n, L), ``y_score`` (n, L), ``labels`` L names, ``thresholds`` (L,). Each curve has
    ``precision``, ``recall`` and ``thresholds`` lists of equal length (at most ``max_points``; the last
    threshold is null: that point predicts nothing), ``ap`` and ``operating_point``
    {threshold, precision, recall, f1} computed with 0/0 = 0, so a threshold above every score reports
    precision 0 although the curve ends at precision 1. Downsampling keeps both ends and the curve point
    that makes the same decisions as the operating threshold. ``"all"`` pools every (image, label)
    score into one micro-averaged curve; its operating point pools each label's decisions at its *own*
    threshold (the micro scores of ``split_metrics``), so it may lie off the pooled curve, and its
    ``threshold`` is the common value when all labels share one, else null.

    >>> y_true = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    >>> y_score = np.array([[0.9, 0.1], [0.8, 0.3], [0.2, 0.6], [0.4, 0.7]])
    >>> c = pr_curves(y_true, y_score, ["cat", "dog"], np.array([0.5, 0.5]))
    >>> c["all"]["operating_point"]["precision"], c["per_label"]["cat"]["ap"]
    (0.75, 1.0)
    """
    if max_points < 3:
        raise ValueError(f"max_points must be >= 3, got {max_points}")
    t, s, th = check_multilabel(y_true, y_score, thresholds, labels)
    pred = s >= th
    common = float(th[0]) if np.all(th == th[0]) else None
    return {
        "all": _curve(t.ravel(), s.ravel(), pred.ravel(), common, max_points),
        "per_label": {
            name: _curve(t[:, j], s[:, j], pred[:, j], float(th[j]), max_points)
            for j, name in enumerate(labels)
        },
    }
