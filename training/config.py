"""Every training knob in one place, with its default and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal


@dataclass
class TrainConfig:
    name: str = "manylabel-demo"  # model name in the BentoML store
    minutes: float = 5.0  # wall-clock budget for head training (the feature pass is extra, and estimated)
    include: list[str] = field(default_factory=list)  # labels to keep (empty: all)
    exclude: list[str] = field(default_factory=list)  # labels to drop
    val_size: float = 0.2  # fraction held out when no --val-labels is given
    val_labels: Path | None = None  # a labels CSV naming the validation images
    lr: float = 1e-4  # AdamW learning rate (measured best for the MLP head on both dev sets)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    l2: float = 0.0  # L2 penalty on the head weights, added to the loss (like LogisticRegression's 1/C)
    batch_size: int = 64  # mini-batch of cached feature vectors
    max_epochs: int = 300  # upper bound when the budget would allow more
    patience: int = 40  # stop after this many epochs without a lower validation loss (0: never)
    head: Literal["linear", "mlp"] = "mlp"  # beat linear and LogisticRegression on both dev sets (README)
    hidden: int = 512  # width of the MLP head's hidden layer
    dropout: float = 0.2  # on the features, MLP head only
    folds: int = 5  # k for the out-of-fold scores that thresholds are computed from
    threshold_source: Literal["oof", "train", "validation"] = "oof"
    min_positives: int = 3  # fewer positives than this: threshold falls back to 0.5
    seed: int = 0
    feature_batch: int = 32  # images per backbone inference call
    workers: int = 2  # image decoding threads
    cache_dir: Path | None = None  # feature + backbone cache (default ~/.cache/manylabel)
    workdir: Path | None = None  # where the run's files are staged (default: a temp dir)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
