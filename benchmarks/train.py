"""Training benchmark: cold/warm training time and validation quality against a linear probe.

For each data set folder (holding `images/` and `labels.csv`):
- cold run: empty feature cache (backbone export + feature pass + head), then a warm run (cached);
- validation mAP and micro-F1 of best and last at the model's own thresholds;
- scikit-learn LogisticRegression on the same cached features and split: micro-F1 at 0.5 and at its
  own out-of-fold F1-optimal thresholds (the number to beat).

    python benchmarks/train.py ../shared/data/voc5_natural_dev ../shared/data/clothing_mosaic_ml10 \
        --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="manylabel-bench-bentoml-"))

from service.manifest import Preprocessing  # noqa: E402
from service.metrics import split_metrics  # noqa: E402
from training.backbone import backbone_onnx  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data.dataset import load_dataset  # noqa: E402
from training.features import compute_features  # noqa: E402
from training.fit import fit  # noqa: E402
from training.head import fold_assignment  # noqa: E402
from training.threshold_search import f1_thresholds  # noqa: E402


def linear_probe(cfg: TrainConfig, folder: Path, c: float = 0.01) -> dict:
    """LogisticRegression (one-vs-rest, standardised features) on the same split fit() uses."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    spec = Preprocessing()
    with load_dataset(folder / "images", folder / "labels.csv", cfg, say=lambda _: None) as data:
        onnx_path = backbone_onnx(cfg.cache_dir, spec)
        fs = compute_features(data.images, onnx_path=onnx_path, spec=spec, cache_root=cfg.cache_dir)
        sp = data.arrays(fs)
        labels = data.labels

    def model():
        return make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=c, max_iter=3000)))

    started = time.perf_counter()
    val_scores = model().fit(sp.x_train, sp.y_train).predict_proba(sp.x_val)
    folds = fold_assignment(len(sp.y_train), cfg.folds, cfg.seed)
    oof = np.zeros_like(sp.y_train)
    for f in range(cfg.folds):
        held = folds == f
        oof[held] = model().fit(sp.x_train[~held], sp.y_train[~held]).predict_proba(sp.x_train[held])
    tuned = f1_thresholds(sp.y_train, oof, labels).values
    at_half = split_metrics(sp.y_val, val_scores, np.full(len(labels), 0.5), labels)
    at_tuned = split_metrics(sp.y_val, val_scores, tuned, labels)
    return {
        "C": c,
        "seconds": time.perf_counter() - started,
        "val_map": at_half.map,
        "val_micro_f1_at_0.5": at_half.micro_f1,
        "val_micro_f1_oof_thresholds": at_tuned.micro_f1,
    }


def bench_dataset(folder: Path, minutes: float) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="manylabel-bench-cache-"))
    cfg = TrainConfig(name=folder.name.replace("_", "-").lower(), minutes=minutes, cache_dir=cache)
    try:
        runs = {}
        for kind in ("cold", "warm"):
            result = fit(folder / "images", folder / "labels.csv", cfg, say=lambda _: None)
            runs[kind] = {
                "total_s": result.total_seconds,
                "features_s": result.feature_seconds,
                "head_s": result.head_seconds,
                "stopped": result.stopped,
            }
        manifest = result.manifest
        quality = {
            which: {
                "epoch": e.epoch,
                "val_map": e.metrics["validation"].map,
                "val_micro_f1": e.metrics["validation"].micro_f1,
                "val_exact_match": e.metrics["validation"].accuracy,
            }
            for which, e in manifest.models.items()
        }
        images = manifest.training["train_images"] + manifest.training["validation_images"]
        return {
            "dataset": folder.name,
            "images": images,
            "labels": len(manifest.labels),
            "head": cfg.head,
            "runs": runs,
            "quality": quality,
            "logreg": linear_probe(replace(cfg), folder),
        }
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| data set | images | cold s | warm s | best mAP | best µF1 | last mAP | last µF1 "
        "| LogReg mAP | LogReg µF1 @0.5 | LogReg µF1 @oof |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q, lr, runs = r["quality"], r["logreg"], r["runs"]
        lines.append(
            f"| {r['dataset']} | {r['images']} | {runs['cold']['total_s']:.1f} "
            f"| {runs['warm']['total_s']:.1f}"
            f" | {q['best']['val_map']:.3f} | {q['best']['val_micro_f1']:.3f} | {q['last']['val_map']:.3f}"
            f" | {q['last']['val_micro_f1']:.3f} | {lr['val_map']:.3f} | {lr['val_micro_f1_at_0.5']:.3f}"
            f" | {lr['val_micro_f1_oof_thresholds']:.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = [bench_dataset(d, args.minutes) for d in args.datasets]
    machine = {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    table = markdown(rows)
    (args.out / "train.md").write_text(table + "\n")
    print(json.dumps(machine))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
