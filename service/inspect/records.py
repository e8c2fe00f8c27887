"""Inspect a trained model from the per-image scores stored with it: no re-inference, no torch.

`ModelRecords.load(model_dir, manifest)` reads `records.npz` once; every function below then takes
(records, which = best | last, split = train | validation, thresholds (L,)) and answers from numpy:
statistics (`split_metrics`, the same numbers as at training time), PR curves with the operating point,
filtered / sorted / paginated predictions and confusion counts; `service.inspect_review` adds
best-vs-last differences, label pairs and likely-mislabelled images. `service.inspector.Inspector`
bundles them for the service and the CLI.

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

import logging
import math
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from service import custom_thresholds
from service.errors import ManifestError, ManylabelError
from service.manifest import WHICH_MODELS, Manifest
from service.metrics import pr_curves, split_metrics

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.npz"
THUMBNAILS_FILE = "thumbnails.zip"
SPLITS = ("train", "validation")
FILTERS = ("all", "correct", "incorrect", "above", "below")
SORTS = ("row", "name", "score", "wrong")  # row/name ascending, score/wrong descending by default
PROFILES = ("optimized", "custom", "high_precision", "high_recall")
VIEWS = ("basic", "advanced")
MAX_PAGE_SIZE = 500


class InspectError(ManylabelError):
    """A bad inspect argument (HTTP 400), or an image that is not there (404), naming the field."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {"error": str(self), "field": self.field}


def check_choice(field: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InspectError(f"{field}: {value!r} is not one of {list(choices)}", field=field)
    return str(value)


# --- the stored per-image records -------------------------------------------------------------------


@dataclass(eq=False)
class ModelRecords:
    """Per-image ground truth and scores of a stored model; rows are train images, then validation."""

    labels: list[str]
    names: np.ndarray  # (n,) str, image paths relative to the training folder
    split: np.ndarray  # (n,) "train" | "validation"
    y_true: np.ndarray  # (n, L) bool
    scores: dict[str, np.ndarray]  # which -> (n, L) float in [0, 1]
    oof: dict[str, np.ndarray] = field(default_factory=dict)  # which -> (n, L), NaN on validation rows
    thumbnails: Path | None = None  # zip with member f"{row:06d}.jpg"
    _zip: zipfile.ZipFile | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stats: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        n, n_labels = self.y_true.shape
        arrays = {"names": self.names, "split": self.split, **self.scores, **self.oof}
        bad = [k for k, a in arrays.items() if a.shape[0] != n or (a.ndim == 2 and a.shape[1] != n_labels)]
        if bad or n_labels != len(self.labels):
            raise ManifestError(
                f"records: {bad or 'y_true'} do not match {n} images × {len(self.labels)} labels"
            )
        self._index = {
            (str(s), str(name)): row for row, (s, name) in enumerate(zip(self.split, self.names, strict=True))
        }

    @classmethod
    def load(cls, model_dir: Path, manifest: Manifest) -> ModelRecords:
        path = Path(model_dir) / RECORDS_FILE
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{path} is missing or unreadable ({exc}): retrain this model") from exc
        thumbs = Path(model_dir) / THUMBNAILS_FILE
        return cls(
            labels=list(manifest.labels),
            names=data["names"].astype(str),
            split=data["split"].astype(str),
            y_true=data["y_true"].astype(bool),
            # float32 as stored: half the memory, and split_metrics widens to float64 exactly as training did
            scores={w: data[f"scores_{w}"] for w in WHICH_MODELS},
            oof={w: data[f"oof_{w}"] for w in WHICH_MODELS if f"oof_{w}" in data},
            thumbnails=thumbs if thumbs.is_file() else None,
        )

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == check_choice("split", split, SPLITS))

    def view(self, which: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, y_true, scores) of one split for the best or last model."""
        rows = self.rows(split)
        return rows, self.y_true[rows], self.scores[check_choice("model", which, WHICH_MODELS)][rows]

    def label_index(self, label: str | None) -> int | None:
        if label is None:
            return None
        if label not in self.labels:
            raise InspectError(
                f"label: unknown label {label!r}; the model's labels are {self.labels}", field="label"
            )
        return self.labels.index(label)

    def thumbnail(self, split: str, name: str) -> bytes:
        """The stored JPEG thumbnail of one train/validation image, looked up by name (never a path)."""
        check_choice("split", split, SPLITS)
        row = self._index.get((split, name)) if isinstance(name, str) else None
        if row is None:
            raise InspectError(
                f"name: no {split} image is named {str(name)[:200]!r}", field="name", status=404
            )
        if self.thumbnails is None:
            raise InspectError("this model was stored without thumbnails", field="name", status=404)
        with self._lock:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.thumbnails)
            try:
                return self._zip.read(f"{row:06d}.jpg")
            except KeyError:
                msg = f"name: {name!r} has no thumbnail (its image could not be read)"
                raise InspectError(msg, field="name", status=404) from None

    def statistics(self, which: str, split: str, thresholds: np.ndarray, *, loss: float | None = None):
        """`split_metrics` of one split, memoised on the thresholds (the UI asks again and again)."""
        key = (which, split, np.asarray(thresholds, np.float64).tobytes(), loss)
        hit = self._stats.get(key)
        if hit is None:
            _, y, s = self.view(which, split)
            hit = split_metrics(y, s, thresholds, self.labels, loss=loss)
            with self._lock:
                self._stats[key] = hit
                while len(self._stats) > 32:
                    self._stats.popitem(last=False)
        return hit


# --- thresholds -------------------------------------------------------------------------------------


class Thresholds(NamedTuple):
    profile: str  # the base the values came from: optimized | custom | high_precision | high_recall
    values: np.ndarray  # (L,) float64
    overridden: tuple[str, ...] = ()  # labels changed by this request's threshold / thresholds


def resolve_thresholds(
    manifest: Manifest,
    which: str,
    *,
    profile: str | None = None,
    custom: custom_thresholds.CustomThresholds | None = None,
    threshold: object = None,
    overrides: Mapping[str, object] | None = None,
) -> Thresholds:
    """The thresholds one request uses, aligned with ``manifest.labels``.

    Base: ``profile`` (``optimized``: the manifest's max-F1 values; ``custom``: those overridden by the
    persisted custom values; ``high_precision`` / ``high_recall``: the training-time profiles); no
    profile means ``custom`` when any custom value is set for ``which``, else ``optimized``. Then
    ``threshold`` replaces every label, then ``overrides`` the labels it names. ThresholdError for an
    unknown label or a value that is not a number in [0, 1].
    """
    which = check_choice("model", which, WHICH_MODELS)
    if profile is None:
        profile = "custom" if custom is not None and custom.values(which) else "optimized"
    profile = check_choice("profile", profile, PROFILES)
    entry = manifest.models[which]
    if profile == "optimized":
        values = list(entry.thresholds)
    elif profile == "custom":
        values = custom_thresholds.effective(manifest, which, custom)
    elif profile in entry.profiles:
        values = list(entry.profiles[profile])
    else:
        raise InspectError(f"profile: this model has no {profile!r} thresholds (retrain it)", field="profile")
    changed: list[str] = []
    if threshold is not None:
        values = [custom_thresholds.check_threshold("threshold", threshold)] * len(values)
        changed = list(manifest.labels)
    if overrides:
        checked = custom_thresholds.check_values(manifest, overrides)
        index = {label: i for i, label in enumerate(manifest.labels)}
        for label, value in checked.items():
            values[index[label]] = value
        changed += [label for label in checked if label not in changed]
    return Thresholds(profile, np.asarray(values, dtype=np.float64), tuple(changed))


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
        raise InspectError(f"max_points: {max_points} is not in [3, 5000]", field="max_points")
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
        raise InspectError(f"page: {page!r} must be an integer >= 1", field="page")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InspectError(
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
