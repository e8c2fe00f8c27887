"""Views over a model's stored records: statistics, PR curves, confusion counts and predictions.

Every function takes (records, which = best | last, split = train | validation, thresholds (L,)) and
answers from numpy.

Correctness (the product's definitions): a label is *above* when ``score >= threshold``; a
ground-truth label above its threshold and a non-ground-truth label below it are correct, the other
two cases incorrect; an image is incorrect when any of its labels is.

Filters act on the label set S = every label, or only ``label`` when one is given:

- ``all``: every image of the split (``label`` only narrows the sort key);
- ``correct`` / ``incorrect``: every label of S is correct / at least one label of S is incorrect
  (without ``label``: the image-level verdict);
- ``above``: at least one label of S is above its threshold (the image has a predicted label);
- ``below``: no label of S is above its threshold (without ``label``: the image gets no label).
  "At least one label below" would match nearly every image once there are two labels, so ``below``
  is the complement of ``above`` for every S: the two filters always partition the split.
"""

from __future__ import annotations

import math

import numpy as np

from service.errors import RequestError
from service.inspect.records import FILTERS, MAX_PAGE_SIZE, SORTS, VIEWS, ModelRecords
from service.metrics import pr_curves
from service.thresholds import check_choice

# --- statistics, curves, confusion ------------------------------------------------------------------


def confusion(records: ModelRecords, which: str, split: str, thresholds: np.ndarray) -> dict[str, dict]:
    """label -> {tp, fp, fn, tn} image counts at ``thresholds``."""
    _, y, s = records.view(which, split)
    above = s >= thresholds
    counts = {
        k: m.sum(0)
        for k, m in {"tp": above & y, "fp": above & ~y, "fn": ~above & y, "tn": ~above & ~y}.items()
    }
    return {label: {k: int(v[j]) for k, v in counts.items()} for j, label in enumerate(records.labels)}


def curves(
    records: ModelRecords,
    which: str,
    split: str,
    thresholds: np.ndarray,
    *,
    label: str | None = None,
    max_points: int = 200,
) -> dict:
    """``metrics.pr_curves`` of one split: {"all": curve, "per_label": {...}}; one label: "all" is None."""
    _, y, s = records.view(which, split)
    j = records.label_index(label)
    if not 3 <= max_points <= 5000:
        raise RequestError(f"max_points: {max_points} is not in [3, 5000]", field="max_points")
    if j is None:
        return pr_curves(y, s, records.labels, thresholds, max_points=max_points)
    one = pr_curves(y[:, [j]], s[:, [j]], [label], thresholds[[j]], max_points=max_points)
    return {"all": None, "per_label": one["per_label"]}


# --- predictions ------------------------------------------------------------------------------------


def _label_set(records: ModelRecords, label: str | None) -> slice | list[int]:
    j = records.label_index(label)
    return slice(None) if j is None else [j]


def select(
    records: ModelRecords,
    which: str,
    split: str,
    thresholds: np.ndarray,
    *,
    filter: str = "all",
    label: str | None = None,
) -> np.ndarray:
    """Record rows of ``split`` kept by ``filter`` on the label set S (see the module docstring)."""
    check_choice("filter", filter, FILTERS)
    rows, y, s = records.view(which, split)
    cols = _label_set(records, label)
    above = (s >= thresholds)[:, cols]
    correct = above == y[:, cols]
    keep = {
        "all": np.ones(len(rows), bool),
        "correct": correct.all(1),
        "incorrect": ~correct.all(1),
        "above": above.any(1),
        "below": ~above.any(1),
    }[filter]
    return rows[keep]


def _sort_key(records: ModelRecords, which: str, rows: np.ndarray, thresholds, sort: str, cols) -> np.ndarray:
    if sort == "row":
        return rows
    if sort == "name":
        return records.names[rows]
    y, s = records.y_true[rows][:, cols], records.scores[which][rows][:, cols]
    if sort == "score":
        return s.max(1)
    # "wrong": the largest |y - score| over incorrect labels (1 + gap), correct images after (gap alone)
    wrong = (s >= thresholds[cols]) != y
    return (np.abs(y - s) + wrong).max(1)


def _item(records: ModelRecords, which: str, row: int, thresholds: np.ndarray, view: str) -> dict:
    y, s = records.y_true[row], records.scores[which][row]
    above = s >= thresholds
    predicted = [lab for lab, a in zip(records.labels, above, strict=True) if a]
    item = {
        "row": int(row),
        "name": str(records.names[row]),
        "split": str(records.split[row]),
        "correct": bool((above == y).all()),
        "true": [lab for lab, t in zip(records.labels, y, strict=True) if t],
        "predicted": predicted,
        "scores": {lab: float(s[records.labels.index(lab)]) for lab in predicted},
    }
    if view == "advanced":
        item["labels"] = {
            lab: {
                "score": float(s[j]),
                "threshold": float(thresholds[j]),
                "above": bool(above[j]),
                "true": bool(y[j]),
                "correct": bool(above[j] == y[j]),
            }
            for j, lab in enumerate(records.labels)
        }
    return item


def predictions(
    records: ModelRecords,
    which: str,
    split: str,
    thresholds: np.ndarray,
    *,
    filter: str = "all",
    label: str | None = None,
    sort: str = "row",
    order: str | None = None,
    page: int = 1,
    page_size: int = 50,
    view: str = "advanced",
) -> dict:
    """One page of the filtered, sorted predictions of a split.

    ``sort``: ``row`` (records order), ``name``, ``score`` (the highest score over S) or ``wrong`` (the
    largest |truth - score| over the incorrect labels of S, images with no incorrect label after);
    ``order`` ``asc`` | ``desc`` (default asc for row/name, desc for score/wrong); ties keep row order.
    ``page`` counts from 1; a page past the end is empty. ``view``: ``basic`` items carry the predicted
    labels and their scores, ``advanced`` adds every label's score, threshold, above, true and correct.
    """
    check_choice("sort", sort, SORTS)
    check_choice("view", view, VIEWS)
    order = order or ("desc" if sort in ("score", "wrong") else "asc")
    check_choice("order", order, ("asc", "desc"))
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise RequestError(f"page: {page!r} must be an integer >= 1", field="page")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise RequestError(
            f"page_size: {page_size!r} must be an integer in [1, {MAX_PAGE_SIZE}]", field="page_size"
        )
    rows = select(records, which, split, thresholds, filter=filter, label=label)
    key = _sort_key(records, which, rows, thresholds, sort, _label_set(records, label))
    ranked = rows[np.argsort(key, kind="stable")]
    if order == "desc":  # reverse the key, not the result, so ties still keep row order
        ranked = rows[np.lexsort((rows, -key))] if key.dtype.kind == "f" else ranked[::-1]
    start = (page - 1) * page_size
    return {
        "split": split,
        "filter": filter,
        "label": label,
        "sort": sort,
        "order": order,
        "page": page,
        "page_size": page_size,
        "total": int(rows.size),
        "pages": math.ceil(rows.size / page_size),
        "items": [_item(records, which, r, thresholds, view) for r in ranked[start : start + page_size]],
    }
