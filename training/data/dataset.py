"""From a source and a labels CSV to aligned train/validation arrays of features and labels."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.manifest import Preprocessing
from service.preprocess import load_image
from training.config import TrainConfig
from training.data.labels import label_counts_table, match_labels, read_labels_csv, select_labels
from training.data.sources import DataError, ImageFile, Sample, open_source
from training.data.splits import split_samples, user_split
from training.features import FeatureSet

PARITY_IMAGES = 4


@dataclass
class SplitArrays:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    names_train: list[str]
    names_val: list[str]
    failed: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def counts(y: np.ndarray, labels: Sequence[str]) -> dict[str, int]:
        return {label: int(n) for label, n in zip(labels, y.sum(axis=0), strict=True)}


@dataclass
class Dataset:
    labels: list[str]
    train: list[Sample]
    validation: list[Sample]

    @property
    def paths(self) -> dict[str, Path]:
        return {s.image.relpath: s.image.path for s in self.train + self.validation}

    @property
    def images(self) -> list[ImageFile]:
        return [s.image for s in self.train + self.validation]

    def _matrix(self, samples: Sequence[Sample]) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels)}
        y = np.zeros((len(samples), len(self.labels)), dtype=np.float32)
        for row, sample in enumerate(samples):
            for label in sample.labels:
                y[row, index[label]] = 1.0
        return y

    def arrays(self, fs: FeatureSet) -> SplitArrays:
        """Align features with labels, leaving out the images that did not decode."""
        row = {name: i for i, name in enumerate(fs.names)}
        train = [s for s in self.train if s.image.relpath in row]
        val = [s for s in self.validation if s.image.relpath in row]
        if not train or not val:
            raise DataError(
                f"after skipping {len(fs.failed)} unreadable images, {len(train)} train and {len(val)} "
                "validation images remain: nothing to train or validate on"
            )
        out = SplitArrays(
            x_train=fs.features[[row[s.image.relpath] for s in train]],
            y_train=self._matrix(train),
            x_val=fs.features[[row[s.image.relpath] for s in val]],
            y_val=self._matrix(val),
            names_train=[s.image.relpath for s in train],
            names_val=[s.image.relpath for s in val],
            failed=fs.failed,
        )
        empty = [label for label, n in out.counts(out.y_train, self.labels).items() if n == 0]
        if empty:
            raise DataError(
                f"label(s) {', '.join(empty)} have no readable positive image in the train split; "
                f"add images or leave them out with --exclude {' '.join(empty)}"
            )
        return out

    def parity_batch(self, spec: Preprocessing, fs: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
        """A few real train images and their cached features, (uint8 batch, features), for the
        export's check that the fused graph turns these pixels into the scores training saw."""
        row = {name: i for i, name in enumerate(fs.names)}
        rows, arrays = [], []
        for sample in self.train:
            if sample.image.relpath not in row:
                continue
            try:
                arrays.append(load_image(sample.image.path, spec, name=sample.image.relpath))
            except Exception:  # an unreadable image was already reported; pick another
                continue
            rows.append(row[sample.image.relpath])
            if len(arrays) == PARITY_IMAGES:
                break
        return np.stack(arrays), fs.features[rows]


@contextmanager
def load_dataset(
    images, labels_csv: Path, cfg: TrainConfig, *, say: Callable[[str], None]
) -> Iterator[Dataset]:
    with open_source(images) as files:
        matched = match_labels(files, read_labels_csv(Path(labels_csv)))
        for line in matched.report_lines():
            say(line)
        selected = select_labels(matched, cfg.include or None, cfg.exclude or None)
        if cfg.val_labels:
            val_set = match_labels(files, read_labels_csv(Path(cfg.val_labels)))
            train, val = user_split(selected, val_set)
        else:
            train, val = split_samples(
                selected.samples, selected.labels, val_size=cfg.val_size, seed=cfg.seed
            )
        say(label_counts_table(train, val, selected.labels))
        yield Dataset(labels=list(selected.labels), train=list(train), validation=list(val))
