"""The per-image records stored with a model: `ModelRecords.load(model_dir, manifest)` reads
`records.npz` once (ground truth and best / last scores of every train and validation image, plus
out-of-fold scores) and looks thumbnails up by image name. No re-inference, no torch.

The views over them live in `service.inspect.views` (statistics, PR curves, confusion counts, filtered
and paged predictions) and `service.inspect.review` (best vs last, label pairs, likely mislabels);
`service.inspect.inspector.Inspector` bundles them for the service and the CLI.
"""

from __future__ import annotations

import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.errors import ManifestError, RequestError
from service.manifest import WHICH_MODELS, Manifest
from service.metrics import split_metrics
from service.thresholds import check_choice, check_which

RECORDS_FILE = "records.npz"
THUMBNAILS_FILE = "thumbnails.zip"
SPLITS = ("train", "validation")
FILTERS = ("all", "correct", "incorrect", "above", "below")
SORTS = ("row", "name", "score", "wrong")  # row/name ascending, score/wrong descending by default
VIEWS = ("basic", "advanced")
MAX_PAGE_SIZE = 500  # the most items one request lists: gallery pages, mislabel candidates, diff names


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
        return rows, self.y_true[rows], self.scores[check_which(which)][rows]

    def label_index(self, label: str | None) -> int | None:
        if label is None:
            return None
        if label not in self.labels:
            raise RequestError(
                f"label: unknown label {label!r}; the model's labels are {self.labels}", field="label"
            )
        return self.labels.index(label)

    def thumbnail(self, split: str, name: str) -> bytes:
        """The stored JPEG thumbnail of one train/validation image, looked up by name (never a path)."""
        check_choice("split", split, SPLITS)
        row = self._index.get((split, name)) if isinstance(name, str) else None
        if row is None:
            raise RequestError(
                f"name: no {split} image is named {str(name)[:200]!r}", field="name", status=404
            )
        if self.thumbnails is None:
            raise RequestError("this model was stored without thumbnails", field="name", status=404)
        with self._lock:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.thumbnails)
            try:
                return self._zip.read(f"{row:06d}.jpg")
            except KeyError:
                msg = f"name: {name!r} has no thumbnail (its image could not be read)"
                raise RequestError(msg, field="name", status=404) from None

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
