"""5-fold cross-validation of head recipes and backbones, next to LogisticRegression on the same features.

For each data set (a folder holding `images/` and `labels.csv`) and backbone, the features come from
the feature cache (computed by `compute_features`, as `fit()` does). The labelled images are dealt
into 5 folds; for each fold, the other four are split into train/validation exactly as `fit()`
splits them (iterative stratification, `val_size`), the head is trained with `train_heads`, its
thresholds are fitted on its own out-of-fold scores by `evaluate_head` (the manifest's code path),
and the held-out fold is scored with `best` at those thresholds.

The reference is scikit-learn's LogisticRegression (C=0.5, standardised features, one-vs-rest):
- `LogReg`: fitted on all four folds (it needs no validation split), micro-F1 at 0.5;
- `LogReg (same train)`: fitted on the head's own train split, for a like-for-like view.

The table in results/cv.md came from three runs, merged (~25 min on 2 cores, features cached):

    D="../shared/data/voc5_natural_dev ../shared/data/clothing_mosaic_ml10"
    python benchmarks/cv.py $D --backbones lite1 lite0 lite2 --recipes default --fresh
    python benchmarks/cv.py $D --backbones lite1 --recipes "512 wide" "5 folds" "128 wide" \\
        "dropout 0.5" "lr 3e-3" "batch 256" "linear head"
    python benchmarks/cv.py $D --backbones lite0 \\
        --recipes "old (lr 1e-4, batch 64, 512 wide, 5 folds, patience 40, 1 min)"

`head s` is the median wall time of `train_heads` per fold, on whatever the machine was doing then.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from service.metrics import split_metrics
from training.backbone import backbone_onnx, choice
from training.config import TrainConfig
from training.data.dataset import SplitArrays
from training.data.labels import load_labelled_set
from training.data.sources import open_source
from training.data.splits import split_samples
from training.features import compute_features
from training.fit import default_cache_dir, evaluate_head
from training.head import fold_assignment, head_scores, train_heads

K = 5
C = 0.5
# Recipes: TrainConfig overrides on top of the defaults.
RECIPES: dict[str, dict] = {
    "default": {},
    "old (lr 1e-4, batch 64, 512 wide, 5 folds, patience 40, 1 min)": {  # the recipe before, on lite0
        "lr": 1e-4,
        "batch_size": 64,
        "max_epochs": 300,
        "patience": 40,
        "hidden": 512,
        "folds": 5,
        "minutes": 1.0,
    },
    "512 wide, 5 folds": {"hidden": 512, "folds": 5},
    "512 wide": {"hidden": 512},
    "5 folds": {"folds": 5},
    "128 wide": {"hidden": 128},
    "dropout 0.5": {"dropout": 0.5},
    "lr 3e-3": {"lr": 3e-3},
    "batch 256": {"batch_size": 256},
    "linear head": {"head": "linear", "lr": 1e-2},
}


def dataset_features(folder: Path, backbone: str, cache_dir: Path):
    """(samples, labels, x aligned with samples, y) for every readable labelled image."""
    spec = choice(backbone).preprocessing()
    with open_source(folder / "images") as files:
        labelled = load_labelled_set(files, folder / "labels.csv")
        onnx_path = backbone_onnx(cache_dir, spec, backbone)
        fs = compute_features(files, onnx_path=onnx_path, spec=spec, cache_root=cache_dir)
    row = {name: i for i, name in enumerate(fs.names)}
    samples = [s for s in labelled.samples if s.image.relpath in row]
    index = {label: j for j, label in enumerate(labelled.labels)}
    y = np.zeros((len(samples), len(labelled.labels)), np.float32)
    for i, s in enumerate(samples):
        for label in s.labels:
            y[i, index[label]] = 1.0
    x = fs.features[[row[s.image.relpath] for s in samples]]
    return samples, list(labelled.labels), x, y


def logreg(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=C, max_iter=3000)))
    return model.fit(x_train, y_train).predict_proba(x_test)


def cross_validate(samples, labels, x, y, cfg: TrainConfig, *, probes: bool) -> dict:
    """Mean over the K held-out folds of mAP and micro-F1, for the head and (with `probes`) LogReg."""
    outer = fold_assignment(len(samples), K, cfg.seed + 100)
    position = {s.image.relpath: i for i, s in enumerate(samples)}
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    for f in range(K):
        test = np.flatnonzero(outer == f)
        rest = [samples[i] for i in np.flatnonzero(outer != f)]
        train, val = split_samples(rest, labels, val_size=cfg.val_size, seed=cfg.seed)
        tr = np.array([position[s.image.relpath] for s in train])
        va = np.array([position[s.image.relpath] for s in val])
        split = SplitArrays(x[tr], y[tr], x[va], y[va], [s.image.relpath for s in train], [])
        started = time.perf_counter()
        folds = fold_assignment(len(tr), cfg.folds, cfg.seed)
        deadline = time.monotonic() + cfg.minutes * 60
        result = train_heads(
            split.x_train, split.y_train, split.x_val, split.y_val, cfg, folds, deadline=deadline
        )
        add("head_s", time.perf_counter() - started)
        entry = evaluate_head("best", result, split, folds, labels, cfg).entry
        scores = head_scores(result.best, x[test], result.mean, result.std)
        m = split_metrics(y[test], scores, np.asarray(entry.thresholds), labels)
        add("map", m.map)
        add("micro_f1", m.micro_f1)
        add("best_epoch", result.best_epoch)
        add("last_epoch", result.last_epoch)
        if probes:
            half = np.full(len(labels), 0.5)
            rest_idx = np.flatnonzero(outer != f)
            for key, fit_rows in (("logreg", rest_idx), ("logreg_same_train", tr)):
                m = split_metrics(y[test], logreg(x[fit_rows], y[fit_rows], x[test]), half, labels)
                add(f"{key}_map", m.map)
                add(f"{key}_micro_f1", m.micro_f1)
    out = {k: float(np.mean(v)) for k, v in rows.items()}
    out["head_s"] = float(np.median(rows["head_s"]))  # median: the machine is shared
    out["map_folds"] = rows["map"]
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| data set | backbone | recipe | mAP | µF1 @own thresholds | LogReg mAP | LogReg µF1 @0.5 "
        "| Δ mAP | Δ µF1 | LogReg (same train) mAP / µF1 | head s (median) | best / last epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["probe"]
        lines.append(
            f"| {r['dataset']} | {r['backbone']} | {r['recipe']} | {r['map']:.3f} | {r['micro_f1']:.3f} "
            f"| {p['logreg_map']:.3f} | {p['logreg_micro_f1']:.3f} | {r['map'] - p['logreg_map']:+.3f} "
            f"| {r['micro_f1'] - p['logreg_micro_f1']:+.3f} "
            f"| {p['logreg_same_train_map']:.3f} / {p['logreg_same_train_micro_f1']:.3f} "
            f"| {r['head_s']:.2f} | {r['best_epoch']:.1f} / {r['last_epoch']:.1f} |"
        )
    return "\n".join(lines)


def merged(path: Path, rows: list[dict], *, fresh: bool) -> list[dict]:
    """Earlier rows of `path` (other data sets, backbones, recipes) with this run's rows replacing theirs."""
    if fresh or not path.is_file():
        return rows
    key = lambda r: (r["dataset"], r["backbone"], r["recipe"])  # noqa: E731
    new = {key(r) for r in rows}
    return [r for r in json.loads(path.read_text())["rows"] if key(r) not in new] + rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--backbones", nargs="+", default=["lite0"], choices=["lite0", "lite1", "lite2"])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help=f"of: {', '.join(RECIPES)}")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--fresh", action="store_true", help="drop the rows cv.json already has")
    args = parser.parse_args()
    rows = []
    for folder in args.datasets:
        for backbone in args.backbones:
            samples, labels, x, y = dataset_features(folder, backbone, args.cache_dir)
            probe = None
            for name in args.recipes:
                cfg = replace(TrainConfig(backbone=backbone), **RECIPES[name])
                res = cross_validate(samples, labels, x, y, cfg, probes=probe is None)
                if probe is None:
                    probe = {k: v for k, v in res.items() if k.startswith("logreg")}
                row = {"dataset": folder.name, "backbone": backbone, "recipe": name, **res, "probe": probe}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "map_folds"}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = merged(args.out / "cv.json", rows, fresh=args.fresh)
    (args.out / "cv.json").write_text(json.dumps({"k": K, "C": C, "rows": rows}, indent=2))
    table = markdown(rows)
    (args.out / "cv.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
