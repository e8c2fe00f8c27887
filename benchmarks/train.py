"""Training benchmark: cold/warm training time per stage, validation quality, and serving speed per backbone.

For each data set folder (holding `images/` and `labels.csv`) and each backbone asked for:
- cold run: empty cache (backbone export + feature pass + thumbnails + head + export), then `--warm`
  warm runs (everything cached but the head); seconds per stage from `TrainResult.stages`, warm as
  the median of the runs (the machine is shared: say how busy it was);
- validation mAP and micro-F1 of best and last at the model's own thresholds, on fit()'s one split
  (benchmarks/cv.py gives the 5-fold numbers the defaults were chosen by);
- scikit-learn LogisticRegression (C=0.5) on the same cached features and split: micro-F1 at 0.5 and
  at its own out-of-fold F1-optimal thresholds;
- serving images/s of the fused best.onnx in-process with onnxruntime (the service's session options),
  batch 1 and 8 of preprocessed images (decoding excluded: it is the same for every backbone).

    python benchmarks/train.py ../shared/data/voc5_natural_dev ../shared/data/clothing_mosaic_ml10 \\
        --backbones lite0 lite1 lite2 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="manylabel-bench-bentoml-"))

from service.metrics import split_metrics  # noqa: E402
from service.preprocess import load_image  # noqa: E402
from service.server.runtime import session_options  # noqa: E402
from training.backbone import backbone_onnx, choice  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data.dataset import load_dataset  # noqa: E402
from training.features import compute_features  # noqa: E402
from training.fit import TrainResult, fit  # noqa: E402
from training.head import fold_assignment  # noqa: E402
from training.threshold_search import f1_thresholds  # noqa: E402

C = 0.5
SERVE_SECONDS = 3.0


def linear_probe(cfg: TrainConfig, folder: Path) -> dict:
    """LogisticRegression (one-vs-rest, standardised features) on the same split fit() uses."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    spec = choice(cfg.backbone).preprocessing()
    with load_dataset(folder / "images", folder / "labels.csv", cfg, say=lambda _: None) as data:
        onnx_path = backbone_onnx(cfg.cache_dir, spec, cfg.backbone)
        fs = compute_features(data.images, onnx_path=onnx_path, spec=spec, cache_root=cfg.cache_dir)
        sp = data.arrays(fs)
        labels = data.labels

    def model():
        return make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=C, max_iter=3000)))

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
        "C": C,
        "seconds": time.perf_counter() - started,
        "val_map": at_half.map,
        "val_micro_f1_at_0.5": at_half.micro_f1,
        "val_micro_f1_oof_thresholds": at_tuned.micro_f1,
    }


def serving_speed(result: TrainResult, images: Path, batch_sizes=(1, 8)) -> dict[str, float]:
    """Images/s of the fused best.onnx on preprocessed images, one session as the service opens it."""
    import onnxruntime as ort

    spec = result.manifest.preprocessing
    files = sorted(p for p in images.iterdir() if p.is_file())[:16]
    arrays = np.stack([load_image(p, spec) for p in files])
    session = ort.InferenceSession(
        str(result.stored.path / "best.onnx"),
        sess_options=session_options(os.cpu_count() or 1),
        providers=["CPUExecutionProvider"],
    )
    out = {}
    for b in batch_sizes:
        batch = arrays[:b]
        session.run(None, {spec.input_name: batch})  # warm-up
        rounds = []
        for _ in range(3):
            n, started = 0, time.perf_counter()
            while time.perf_counter() - started < SERVE_SECONDS / 3:
                session.run(None, {spec.input_name: batch})
                n += b
            rounds.append(n / (time.perf_counter() - started))
        out[f"batch_{b}"] = max(rounds)  # noise only slows a round down
    return out


def _run(result: TrainResult) -> dict:
    return {
        "total_s": result.total_seconds,
        "cpu_s": sum(result.stages_cpu.values()),
        "stages": result.stages,
        "stages_cpu": result.stages_cpu,
        "stopped": result.stopped,
        "best_epoch": result.manifest.models["best"].epoch,
        "last_epoch": result.manifest.models["last"].epoch,
    }


def bench(
    folder: Path, backbone: str, minutes: float, warm_runs: int, default_backbone: str, int8: str = "auto"
) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="manylabel-bench-cache-"))
    name = folder.name.replace("_", "-").lower()
    if backbone != default_backbone:
        name += f"-{backbone}"  # the default keeps the name run.py serves
    cfg = TrainConfig(name=name, minutes=minutes, cache_dir=cache, backbone=backbone, int8=int8)
    try:
        load = os.getloadavg()[0]
        result = fit(folder / "images", folder / "labels.csv", cfg, say=lambda _: None)
        cold = _run(result)
        warms = [
            _run(result := fit(folder / "images", folder / "labels.csv", cfg, say=lambda _: None))
            for _ in range(warm_runs)
        ]
        names = list(warms[0]["stages"])
        warm = {
            "runs": warms,
            "total_s": statistics.median(w["total_s"] for w in warms),
            "cpu_s": statistics.median(w["cpu_s"] for w in warms),
            "stages": {s: statistics.median(w["stages"][s] for w in warms) for s in names},
            "stages_cpu": {s: statistics.median(w["stages_cpu"][s] for w in warms) for s in names},
        }
        manifest = result.manifest
        quality = {
            which: {
                "epoch": e.epoch,
                "val_map": e.metrics["validation"].map,
                "val_micro_f1": e.metrics["validation"].micro_f1,
                "val_exact_match": e.metrics["validation"].accuracy,
                "int8": _int8(e),
            }
            for which, e in manifest.models.items()
        }
        images = manifest.training["train_images"] + manifest.training["validation_images"]
        return {
            "dataset": folder.name,
            "backbone": backbone,
            "int8": int8,
            "images": images,
            "labels": len(manifest.labels),
            "head": cfg.head,
            "load_average_at_start": load,
            "runs": {"cold": cold, "warm": warm},
            "quality": quality,
            "serving_img_s": serving_speed(result, folder / "images"),
            "logreg": linear_probe(cfg, folder),
        }
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _int8(entry) -> dict | None:
    """The int8 variant's check (validation mAP fp32 -> int8, largest score difference), kept or why not."""
    variant = entry.variants.get("int8")
    if variant is None:
        return None
    check = variant.validation.model_dump() if variant.validation is not None else None
    return {"kept": variant.kept, "reason": variant.reason, "validation": check}


def _int8_text(v: dict | None) -> str:
    if v is None:
        return "off"
    c = v["validation"]
    if c is None:
        return "dropped"
    maps = " → ".join("n/a" if m is None else f"{m:.3f}" for m in (c["map_fp32"], c["map"]))
    return f"{maps}, max Δ {c['max_score_diff']:.2f}, {'kept' if v['kept'] else 'dropped'}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| data set | backbone | images | cold s | warm s | best mAP | best µF1 | last mAP | last µF1 "
        "| LogReg mAP | LogReg µF1 @0.5 | LogReg µF1 @oof | serve img/s b1 / b8 | int8 best: val mAP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q, lr, runs, sv = r["quality"], r["logreg"], r["runs"], r["serving_img_s"]
        lines.append(
            f"| {r['dataset']} | {r['backbone']} | {r['images']} | {runs['cold']['total_s']:.1f} "
            f"| {runs['warm']['total_s']:.1f}"
            f" | {q['best']['val_map']:.3f} | {q['best']['val_micro_f1']:.3f} | {q['last']['val_map']:.3f}"
            f" | {q['last']['val_micro_f1']:.3f} | {lr['val_map']:.3f} | {lr['val_micro_f1_at_0.5']:.3f}"
            f" | {lr['val_micro_f1_oof_thresholds']:.3f} | {sv['batch_1']:.0f} / {sv['batch_8']:.0f}"
            f" | {_int8_text(q['best'].get('int8'))} |"
        )
    return "\n".join(lines)


def stages_markdown(rows: list[dict]) -> str:
    """Wall (CPU) seconds per stage, cold and warm (median), one row per data set x backbone x run."""
    stages = list(dict.fromkeys(s for r in rows for run in r["runs"].values() for s in run["stages"]))
    lines = [
        "| data set | backbone | run | total | " + " | ".join(stages) + " |",
        "|---|---|---|---|" + "---|" * len(stages),
    ]
    for r in rows:
        for kind in ("cold", "warm"):
            run = r["runs"][kind]
            wall, cpu = run["stages"], run["stages_cpu"]
            cells = " | ".join(f"{wall.get(s, 0.0):.2f} ({cpu.get(s, 0.0):.2f})" for s in stages)
            total = f"{run['total_s']:.1f} ({run['cpu_s']:.1f})"
            what = f"{kind}, int8 {r.get('int8', 'auto')}"
            lines.append(f"| {r['dataset']} | {r['backbone']} | {what} | {total} | {cells} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument(
        "--backbones", nargs="+", default=[TrainConfig().backbone], choices=["lite0", "lite1", "lite2"]
    )
    parser.add_argument("--warm", type=int, default=3, help="warm runs per data set (median reported)")
    parser.add_argument(
        "--int8", nargs="+", default=["auto"], choices=["auto", "off"], help="TrainConfig.int8 values to run"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    default = TrainConfig().backbone
    rows = [
        bench(d, b, args.minutes, args.warm, default, int8)
        for d in args.datasets
        for b in args.backbones
        for int8 in args.int8
    ]
    machine = {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    note = "\n\nWall (CPU) seconds per stage; warm: median of the runs; CPU counts all threads:\n\n"
    table = markdown(rows) + note + stages_markdown(rows)
    (args.out / "train.md").write_text(table + "\n")
    print(json.dumps(machine))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
