"""Every training knob in one place, with its default and why.

Each field is also a `manylabel train` / `demo` flag (`lr` -> `--lr`, `max_epochs` -> `--max-epochs`):
training/cli.py builds the parser from these fields, so the help text lives beside the default.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


def knob(default: Any, help: str, **flag: Any) -> Any:
    """A field with its flag's help text; `flag` adds argparse options (metavar, exclusive group)."""
    if isinstance(default, list):  # a fresh list per config, never one shared default
        return field(default_factory=lambda: copy.copy(default), metadata={"help": help, **flag})
    return field(default=default, metadata={"help": help, **flag})


@dataclass
class TrainConfig:
    # fmt: off
    name: str = knob("manylabel-demo", "model name in the BentoML store")
    minutes: float = knob(5.0, "wall-clock budget for head training (the feature pass is extra)")
    include: list[str] = knob([], "train only these labels (default: all)", metavar="LABEL")
    exclude: list[str] = knob([], "leave these labels out", metavar="LABEL")
    val_size: float = knob(0.2, "fraction held out for validation", exclusive="validation")
    val_labels: Path | None = knob(None, "a labels CSV naming the validation images", exclusive="validation")
    backbone: Literal["lite0", "lite1", "lite2"] = knob("lite1", "EfficientNet-Lite at 224, 240 or 260 px")
    lr: float = knob(1e-3, "AdamW learning rate: the best epoch comes within ~10 passes (5-fold CV)")
    weight_decay: float = knob(1e-4, "AdamW decoupled weight decay")
    l2: float = knob(0.0, "L2 penalty on the head weights, added to the loss (like LogisticRegression's 1/C)")
    batch_size: int = knob(128, "mini-batch of cached feature vectors")
    max_epochs: int = knob(60, "upper bound when the budget would allow more")
    patience: int = knob(3, "stop after N epochs without a lower smoothed validation loss (0: never)")
    head: Literal["linear", "mlp"] = knob("mlp", "mlp beat linear and LogisticRegression on both dev sets")
    hidden: int = knob(256, "width of the MLP head's hidden layer (512: +0.002 mAP for twice the time)")
    dropout: float = knob(0.2, "dropout on the features, MLP head only")
    folds: int = knob(3, "k for the out-of-fold scores that thresholds are computed from")
    threshold_source: Literal["oof", "train", "validation"] = knob("oof", "scores the thresholds are fit on")
    min_positives: int = knob(3, "fewer positives than this: the label's threshold falls back to 0.5")
    seed: int = knob(0, "seed for the split, the folds and the head's initialisation")
    feature_batch: int = knob(32, "images per backbone inference call")
    workers: int = knob(2, "image decoding threads")
    cache_dir: Path | None = knob(None, "feature + backbone cache (default ~/.cache/manylabel)")
    workdir: Path | None = knob(None, "keep the run's files here too (default: a temp dir only)")
    device: Literal["auto", "cpu", "cuda"] = knob("auto", "where the backbone and head run")
    int8: Literal["auto", "off"] = knob(
        "auto", "auto: add calibrated int8 variants of best and last when they keep validation quality"
    )
    dataset: str | None = knob(None, "where the labels came from, kept in the manifest (studio: ID@VERSION)")
    # fmt: on

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
