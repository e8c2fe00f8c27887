"""Per-label decision thresholds chosen on scores: max-F1 and the precision / recall profiles.

Every search is exact: the candidate cuts are the distinct scores (ties always fall on the same side),
found with one sort per label, O(n log n). A chosen cut ``score >= s`` is stored as the midpoint between
``s`` and the next lower distinct score, so a tiny shift of a score (another runtime, another batch)
does not flip a decision; the threshold still makes exactly the decisions it was chosen for.

Degenerate labels (fewer than ``min_positives`` positives, or no negatives) get the documented
``fallback`` value; the reason is recorded per label in ``ThresholdResult.fallbacks`` and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.metrics import check_binary, check_multilabel, counts_at_scores

logger = logging.getLogger(__name__)

# (scores, tps, fps) of one label -> (threshold, None), or (fallback threshold, why) when unreachable
Picker = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, str | None]]


@dataclass(frozen=True)
class ThresholdResult:
    """Thresholds aligned with the label names, and why some labels got a fallback value."""

    values: np.ndarray  # (L,) float in [0, 1]
    fallbacks: dict[str, str] = field(default_factory=dict)  # label -> reason


# --- one label -----------------------------------------------------------------------------------


def _cut_threshold(scores: np.ndarray, k: int) -> float:
    """A threshold that predicts exactly ``score >= scores[k]`` (``scores`` distinct, descending)."""
    s = float(scores[k])
    if k + 1 < scores.size:
        lower = float(scores[k + 1])
        mid = (s + lower) / 2
        return mid if mid > lower else s  # adjacent floats: the midpoint may round onto `lower`
    gap = s - float(scores[k - 1]) if k > 0 else -s  # below the lowest score: mirror the gap above it
    return max(0.0, s + gap / 2)


def _f1_per_cut(tps: np.ndarray, fps: np.ndarray) -> np.ndarray:
    return 2 * tps / (tps + fps + tps[-1])  # 2TP / (2TP + FP + FN), as FN = P - TP


def best_f1_threshold(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float]:
    """The threshold maximising F1 exactly, and that F1.

    ``y_true`` (n,) bool, ``y_score`` (n,) in [0, 1]. Among equally good cuts the highest wins (fewer
    predictions). The threshold sits halfway between the cut's lowest included score and the next lower
    distinct score; when predicting everything is best, it sits below the lowest score by half the gap
    to the next higher one (half the score when all scores are equal), clipped to [0, 1]. Without
    positives F1 is 0 everywhere and the threshold predicts nothing (halfway between the top score and
    1). Applying it with ``>=`` reproduces the returned F1; the search is one sort, O(n log n).

    >>> threshold, f1 = best_f1_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    >>> round(threshold, 4), f1  # cut at 0.35: TP 2, FP 1, FN 0
    (0.225, 0.8)
    """
    t, s = check_binary(y_true, y_score)
    scores, tps, fps = counts_at_scores(t, s)
    if tps[-1] == 0:
        return min(1.0, (float(scores[0]) + 1.0) / 2), 0.0
    f1 = _f1_per_cut(tps, fps)
    k = int(np.argmax(f1))  # first maximum = highest threshold
    return _cut_threshold(scores, k), float(f1[k])


def _pick_f1(scores: np.ndarray, tps: np.ndarray, fps: np.ndarray) -> tuple[float, str | None]:
    return _cut_threshold(scores, int(np.argmax(_f1_per_cut(tps, fps)))), None


def _pick_precision(target: float) -> Picker:
    def pick(scores: np.ndarray, tps: np.ndarray, fps: np.ndarray) -> tuple[float, str | None]:
        precision = tps / (tps + fps)
        ok = np.flatnonzero(precision >= target)
        if ok.size == 0:
            value, _ = _pick_f1(scores, tps, fps)
            return value, f"precision {target} unreachable (best {precision.max():.3f}): max-F1 {value:.4f}"
        return _cut_threshold(scores, int(ok[-1])), None  # most inclusive cut = lowest threshold

    return pick


def _pick_recall(target: float) -> Picker:
    def pick(scores: np.ndarray, tps: np.ndarray, fps: np.ndarray) -> tuple[float, str | None]:
        k = int(np.argmax(tps / tps[-1] >= target))  # first cut reaching it = highest threshold
        return _cut_threshold(scores, k), None  # always reachable: the last cut has recall 1

    return pick


# --- all labels ----------------------------------------------------------------------------------


def _degenerate(positives: int, negatives: int, min_positives: int, fallback: float) -> str | None:
    if positives < min_positives:
        return f"{positives} positives < {min_positives}: fixed {fallback}"
    if negatives == 0:
        return f"no negatives: fixed {fallback}"
    return None


def _per_label(
    y_true: np.ndarray,
    y_score: np.ndarray,
    labels: Sequence[str],
    pick: Picker,
    *,
    min_positives: int,
    fallback: float,
) -> ThresholdResult:
    if min_positives < 1 or not 0.0 <= fallback <= 1.0:
        raise ValueError(f"need min_positives >= 1 and fallback in [0, 1], got {min_positives}, {fallback}")
    t, s, _ = check_multilabel(y_true, y_score, labels=labels)
    t, s = np.ascontiguousarray(t.T), np.ascontiguousarray(s.T)  # one contiguous row per label
    values, fallbacks = np.full(len(labels), fallback), {}
    for j, name in enumerate(labels):
        positives = int(t[j].sum())
        reason = _degenerate(positives, t.shape[1] - positives, min_positives, fallback)
        if reason is None:
            values[j], reason = pick(*counts_at_scores(t[j], s[j]))
        if reason is not None:
            fallbacks[name] = reason
            logger.warning("threshold for label %r: %s", name, reason)
    return ThresholdResult(values=values, fallbacks=fallbacks)


def f1_thresholds(
    y_true: np.ndarray,
    y_score: np.ndarray,
    labels: Sequence[str],
    *,
    min_positives: int = 3,
    fallback: float = 0.5,
) -> ThresholdResult:
    """Per-label max-F1 thresholds (see ``best_f1_threshold``), with ``fallback`` for degenerate labels.

    ``y_true`` (n, L), ``y_score`` (n, L), ``labels`` L names; ``values`` is (L,). A label with fewer
    than ``min_positives`` positives, or no negatives, gets ``fallback`` and a recorded reason.

    >>> y_true = np.array([[1, 1], [1, 0], [0, 0], [1, 0]])
    >>> y_score = np.array([[0.9, 0.8], [0.6, 0.3], [0.2, 0.6], [0.7, 0.1]])
    >>> r = f1_thresholds(y_true, y_score, ["cat", "dog"])
    >>> r.values.tolist(), r.fallbacks
    ([0.4, 0.5], {'dog': '1 positives < 3: fixed 0.5'})
    """
    return _per_label(y_true, y_score, labels, _pick_f1, min_positives=min_positives, fallback=fallback)


def _check_target(target: float) -> None:
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target}")


def target_precision_thresholds(
    y_true: np.ndarray,
    y_score: np.ndarray,
    labels: Sequence[str],
    *,
    target: float = 0.9,
    min_positives: int = 3,
    fallback: float = 0.5,
) -> ThresholdResult:
    """Per label, the lowest threshold whose precision is at least ``target`` (the high-precision profile).

    ``y_true`` (n, L), ``y_score`` (n, L), ``labels`` L names; ``values`` is (L,). Where no cut reaches
    ``target`` the label gets its max-F1 threshold; degenerate labels get ``fallback``; both recorded.

    >>> y_true = np.array([[1], [0], [1], [1]])
    >>> y_score = np.array([[0.9], [0.8], [0.7], [0.6]])
    >>> target_precision_thresholds(y_true, y_score, ["cat"], target=0.75).values.tolist()
    [0.55]
    """
    _check_target(target)
    pick = _pick_precision(target)
    return _per_label(y_true, y_score, labels, pick, min_positives=min_positives, fallback=fallback)


def target_recall_thresholds(
    y_true: np.ndarray,
    y_score: np.ndarray,
    labels: Sequence[str],
    *,
    target: float = 0.9,
    min_positives: int = 3,
    fallback: float = 0.5,
) -> ThresholdResult:
    """Per label, the highest threshold whose recall is at least ``target`` (the high-recall profile).

    ``y_true`` (n, L), ``y_score`` (n, L), ``labels`` L names; ``values`` is (L,). Recall 1 is always
    reachable, so only degenerate labels get ``fallback`` (recorded).

    >>> y_true = np.array([[1], [0], [1], [1]])
    >>> y_score = np.array([[0.9], [0.8], [0.7], [0.6]])
    >>> target_recall_thresholds(y_true, y_score, ["cat"], target=0.6).values.round(4).tolist()
    [0.65]
    """
    _check_target(target)
    pick = _pick_recall(target)
    return _per_label(y_true, y_score, labels, pick, min_positives=min_positives, fallback=fallback)
