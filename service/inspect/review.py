"""Review views over the stored per-image records: best vs last, label pairs, likely mislabels.

Same conventions as `service.inspect.views` (a label is above when ``score >= threshold``); pure numpy
over `service.inspect.records.ModelRecords`, no re-inference. ``limit`` is at most `MAX_PAGE_SIZE`, like
a gallery page: a request lists no more than that many images.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from service.errors import RequestError
from service.inspect.records import MAX_PAGE_SIZE, ModelRecords
from service.manifest import WHICH_MODELS
from service.thresholds import check_which


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def diff(records: ModelRecords, split: str, thresholds: Mapping[str, np.ndarray], *, limit: int = 20) -> dict:
    """Best vs last on one split, each at its own thresholds; deltas are last - best.

    Per label: AP, F1, and the images whose verdict (above / below) changes, split into ``fixed``
    (wrong with best, right with last) and ``broken``; per image: the image-level verdicts that change.
    """
    _count("limit", limit, maximum=MAX_PAGE_SIZE)
    rows, y, _ = records.view("best", split)
    above = {w: records.scores[w][rows] >= thresholds[w] for w in WHICH_MODELS}
    right = {w: above[w] == y for w in WHICH_MODELS}
    stats = {w: records.statistics(w, split, thresholds[w]) for w in WHICH_MODELS}
    names = records.names[rows]

    def listed(mask: np.ndarray) -> list[str]:
        return [str(n) for n in names[mask][:limit]]

    per_label = {}
    for j, label in enumerate(records.labels):
        b, la = stats["best"].per_label[label], stats["last"].per_label[label]
        fixed, broken = ~right["best"][:, j] & right["last"][:, j], right["best"][:, j] & ~right["last"][:, j]
        per_label[label] = {
            "ap_best": b.ap,
            "ap_last": la.ap,
            "delta_ap": _delta(b.ap, la.ap),
            "f1_best": b.f1,
            "f1_last": la.f1,
            "delta_f1": la.f1 - b.f1,
            "changed": int((fixed | broken).sum()),
            "fixed": listed(fixed),
            "broken": listed(broken),
        }
    img_b, img_l = right["best"].all(1), right["last"].all(1)
    return {
        "split": split,
        "map": {
            "best": stats["best"].map,
            "last": stats["last"].map,
            "delta": _delta(stats["best"].map, stats["last"].map),
        },
        "accuracy": {"best": stats["best"].accuracy, "last": stats["last"].accuracy},
        "per_label": per_label,
        "images": {
            "fixed": int((~img_b & img_l).sum()),
            "broken": int((img_b & ~img_l).sum()),
            "fixed_names": listed(~img_b & img_l),
            "broken_names": listed(img_b & ~img_l),
        },
    }


def label_pairs(
    records: ModelRecords, which: str, split: str, thresholds: np.ndarray, *, top: int = 10
) -> dict:
    """The label pairs most often confused and most often co-occurring in the ground truth.

    ``confused``: images where ``true`` is missed (false negative) while ``predicted`` is wrongly
    given (false positive), most frequent first. ``co_occurring``: images labelled with both, with the
    Jaccard index of the two label sets.
    """
    _, y, s = records.view(which, split)
    above = s >= thresholds
    yi, fn, fp = y.astype(np.int64), (y & ~above).astype(np.int64), (~y & above).astype(np.int64)
    confused, together, count = fn.T @ fp, yi.T @ yi, yi.sum(0)
    np.fill_diagonal(confused, 0)
    labels = records.labels
    return {
        "confused": [
            {"true": labels[a], "predicted": labels[b], "images": c} for c, a, b in _top(confused, top)
        ],
        "co_occurring": [
            {"labels": [labels[a], labels[b]], "images": c, "jaccard": c / int(count[a] + count[b] - c)}
            for c, a, b in _top(np.triu(together, 1), top)
        ],
    }


def _top(counts: np.ndarray, top: int) -> list[tuple[int, int, int]]:
    """(count, a, b) of the ``top`` non-zero cells, largest first, ties in label order."""
    a, b = np.nonzero(counts)
    order = np.lexsort((b, a, -counts[a, b]))[: _count("top", top)]
    return [(int(counts[a[k], b[k]]), int(a[k]), int(b[k])) for k in order]


def _count(field: str, value: int, *, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(f"{field}: {value!r} must be an integer >= 0", field=field)
    if maximum is not None and value > maximum:
        raise RequestError(f"{field}: {value!r} must be an integer in [0, {maximum}]", field=field)
    return value


def mislabel_candidates(
    records: ModelRecords, which: str, *, split: str | None = None, limit: int = 50, min_gap: float = 0.5
) -> list[dict]:
    """(image, label) pairs whose score contradicts the given label, most contradictory first.

    The score is one the model did not learn the image from: out-of-fold for train rows (the model's
    own score, flagged ``source: "train (seen)"``, when folds were disabled), the model's score for
    validation rows. ``gap = |truth - score|``; pairs with ``gap >= min_gap`` are kept. A high score on
    an unlabelled label suggests ``missing label?``, a low score on a given label ``spurious label?``.
    """
    check_which(which)
    _count("limit", limit, maximum=MAX_PAGE_SIZE)
    if not 0.0 <= min_gap <= 1.0:
        raise RequestError(f"min_gap: {min_gap!r} is not in [0, 1]", field="min_gap")
    rows = np.arange(len(records.names)) if split is None else records.rows(split)
    p = records.scores[which][rows].copy()
    source = np.where(records.split[rows] == "train", "train (seen)", "validation").astype(object)
    oof = records.oof.get(which)
    if oof is not None:
        known = np.isfinite(oof[rows]).all(1)
        p[known] = oof[rows][known]
        source[known] = "out-of-fold"
    y = records.y_true[rows]
    gap = np.abs(y - np.clip(p, 0.0, 1.0))
    r, j = np.nonzero(gap >= min_gap)
    order = np.lexsort((j, r, -gap[r, j]))[:limit]
    return [
        {
            "row": int(rows[r[k]]),
            "name": str(records.names[rows[r[k]]]),
            "split": str(records.split[rows[r[k]]]),
            "label": records.labels[j[k]],
            "given": bool(y[r[k], j[k]]),
            "score": float(p[r[k], j[k]]),
            "gap": float(gap[r[k], j[k]]),
            "source": str(source[r[k]]),
            "suggestion": "spurious label?" if y[r[k], j[k]] else "missing label?",
        }
        for k in order
    ]
