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

Issue 13's ensemble and feature levers on VOC (one training run per distinct training recipe: the
serving variants below share it; `--reuse-probe` takes LogReg's numbers from cv.json):

    python benchmarks/cv.py ../shared/data/voc5_natural_dev --backbones lite1 --reuse-probe \\
        --recipes default "mean of heads" "mean of heads (probabilities)" "lr 3e-4, patience 10" \\
        "lr 3e-4, patience 10, mean of heads" "sqrt features" "sqrt features, mean of heads"
    python benchmarks/cv.py ../shared/data/clothing_mosaic_ml10 --backbones lite1 --reuse-probe \\
        --recipes "mean of heads" "mean of heads (probabilities)"

A recipe is TrainConfig overrides plus two keys of its own: `serve` (what scores the held-out fold:
`head 0`, the model `fit()` ships, or the mean of all 1 + k heads' logits or probabilities, where the
thresholds still come from the single fold heads' out-of-fold scores, as `fit()` would fit them) and
`features` (`sqrt`: the head sees the square root of the pooled features; LogReg keeps the raw ones).
Those rows' `head s` were measured while the 2 cores ran ~8-10 other processes: compare them with
each other only (the default head takes ~0.5 s on VOC and ~1 s on clothing on a quiet machine).

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
from training.head import HeadResult, fold_assignment, sigmoid, train_heads

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
    # Issue 13's levers: serving the fold heads too (they are trained anyway), a slower recipe,
    # a square-root (power) normalisation of the pooled ReLU6 features.
    "mean of heads": {"serve": "mean of logits"},
    "mean of heads (probabilities)": {"serve": "mean of probabilities"},
    "lr 3e-4, patience 10": {"lr": 3e-4, "patience": 10, "max_epochs": 200},
    "lr 3e-4, patience 10, mean of heads": {
        "lr": 3e-4,
        "patience": 10,
        "max_epochs": 200,
        "serve": "mean of logits",
    },
    "sqrt features": {"features": "sqrt"},
    "sqrt features, mean of heads": {"features": "sqrt", "serve": "mean of logits"},
}
OWN_KEYS = ("serve", "features")  # recipe keys that are not TrainConfig fields


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


def transform(x: np.ndarray, features: str) -> np.ndarray:
    """What the head sees: the pooled features, or their square root (they are >= 0: ReLU6, then mean)."""
    return np.sqrt(np.maximum(x, 0)) if features == "sqrt" else x


def serve_scores(result: HeadResult, x: np.ndarray, serve: str) -> np.ndarray:
    """(N, L) scores of `best` on raw features: head 0, or the mean over all 1 + k heads."""
    logits = result.best(((x - result.mean) / result.std).astype(np.float32))  # (H, N, L)
    if serve == "head 0":
        return sigmoid(logits[0])
    if serve == "mean of logits":
        return sigmoid(logits.mean(axis=0))
    if serve == "mean of probabilities":
        return sigmoid(logits).mean(axis=0)
    raise ValueError(f"unknown serve {serve!r}")


def outer_folds(samples, labels, cfg: TrainConfig):
    """(train rows, validation rows, test rows) per outer fold: `fit()`'s split of the other K - 1 folds."""
    outer = fold_assignment(len(samples), K, cfg.seed + 100)
    position = {s.image.relpath: i for i, s in enumerate(samples)}
    for f in range(K):
        rest = [samples[i] for i in np.flatnonzero(outer != f)]
        train, val = split_samples(rest, labels, val_size=cfg.val_size, seed=cfg.seed)
        tr = np.array([position[s.image.relpath] for s in train])
        va = np.array([position[s.image.relpath] for s in val])
        yield tr, va, np.flatnonzero(outer == f), np.flatnonzero(outer != f)


def train_folds(samples, labels, x, y, cfg: TrainConfig) -> list[dict]:
    """One trained head per outer fold, with its thresholds (`evaluate_head`, the manifest's path)."""
    trained = []
    for tr, va, test, rest in outer_folds(samples, labels, cfg):
        split = SplitArrays(x[tr], y[tr], x[va], y[va], [samples[i].image.relpath for i in tr], [])
        started = time.perf_counter()
        folds = fold_assignment(len(tr), cfg.folds, cfg.seed)
        deadline = time.monotonic() + cfg.minutes * 60
        result = train_heads(
            split.x_train, split.y_train, split.x_val, split.y_val, cfg, folds, deadline=deadline
        )
        head_s = time.perf_counter() - started
        entry = evaluate_head("best", result, split, folds, labels, cfg).entry
        thresholds = np.asarray(entry.thresholds)
        trained.append(
            {
                "result": result,
                "thresholds": thresholds,
                "head_s": head_s,
                "test": test,
                "tr": tr,
                "rest": rest,
            }
        )
    return trained


def cross_validate(labels, x, y, trained: list[dict], serve: str) -> dict:
    """Mean over the K held-out folds of mAP and micro-F1 of one serving variant of `trained`."""
    rows: dict[str, list[float]] = {}
    for t in trained:
        test, result = t["test"], t["result"]
        scores = serve_scores(result, x[test], serve)
        m = split_metrics(y[test], scores, t["thresholds"], labels)
        half = split_metrics(y[test], scores, np.full(len(labels), 0.5), labels)
        for key, value in (
            ("head_s", t["head_s"]),
            ("map", m.map),
            ("micro_f1", m.micro_f1),
            ("micro_f1_at_half", half.micro_f1),
            ("best_epoch", result.best_epoch),
            ("last_epoch", result.last_epoch),
        ):
            rows.setdefault(key, []).append(value)
    out = {k: float(np.mean(v)) for k, v in rows.items()}
    out["head_s"] = float(np.median(rows["head_s"]))  # median: the machine is shared
    out["map_folds"] = rows["map"]
    out["micro_f1_folds"] = rows["micro_f1"]
    return out


def probes(labels, x, y, trained: list[dict]) -> dict:
    """LogReg's mAP and micro-F1@0.5 per held-out fold, fitted on all K - 1 folds or the head's train rows."""
    rows: dict[str, list[float]] = {}
    half = np.full(len(labels), 0.5)
    for t in trained:
        test = t["test"]
        for key, fit_rows in (("logreg", t["rest"]), ("logreg_same_train", t["tr"])):
            m = split_metrics(y[test], logreg(x[fit_rows], y[fit_rows], x[test]), half, labels)
            rows.setdefault(f"{key}_map", []).append(m.map)
            rows.setdefault(f"{key}_micro_f1", []).append(m.micro_f1)
    return {k: float(np.mean(v)) for k, v in rows.items()}


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


def reused_probe(rows: list[dict], dataset: str, backbone: str) -> dict | None:
    """LogReg's numbers from an earlier row of the same data set and backbone (same K, seed, splits)."""
    return next((r["probe"] for r in rows if (r["dataset"], r["backbone"]) == (dataset, backbone)), None)


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
    parser.add_argument(
        "--reuse-probe",
        action="store_true",
        help="LogReg's numbers from cv.json's row of the same set and backbone",
    )
    args = parser.parse_args()
    earlier = (
        json.loads((args.out / "cv.json").read_text())["rows"] if (args.out / "cv.json").is_file() else []
    )
    rows = []
    for folder in args.datasets:
        for backbone in args.backbones:
            samples, labels, x, y = dataset_features(folder, backbone, args.cache_dir)
            probe = reused_probe(earlier, folder.name, backbone) if args.reuse_probe else None
            runs: dict[str, list[dict]] = {}  # one training per distinct training recipe
            for name in args.recipes:
                recipe = RECIPES[name]
                own = {k: recipe[k] for k in OWN_KEYS if k in recipe}
                cfg = replace(
                    TrainConfig(backbone=backbone), **{k: v for k, v in recipe.items() if k not in OWN_KEYS}
                )
                features = own.get("features", "pooled")
                key = json.dumps([cfg.to_json(), features], sort_keys=True)
                if key not in runs:
                    runs[key] = train_folds(samples, labels, transform(x, features), y, cfg)
                if probe is None:
                    probe = probes(labels, x, y, runs[key])
                res = cross_validate(labels, transform(x, features), y, runs[key], own.get("serve", "head 0"))
                row = {"dataset": folder.name, "backbone": backbone, "recipe": name, **res, "probe": probe}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if not k.endswith("_folds")}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = merged(args.out / "cv.json", rows, fresh=args.fresh)
    (args.out / "cv.json").write_text(json.dumps({"k": K, "C": C, "rows": rows}, indent=2))
    table = markdown(rows)
    (args.out / "cv.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
