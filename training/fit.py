"""`fit()`: images + labels CSV -> best/last ONNX models + manifest in the BentoML model store.

Read it as the table of contents of training; each step lives in its own module. Every stage is
timed (`TrainResult.stages`, and a `timing` event in progress.jsonl). On a warm run everything but
the head comes from a cache (backbone graph, features, thumbnails, the int8 backbone and its
features), so the head is what a retrain costs.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from service.manifest import WHICH_MODELS, Manifest, file_entry
from service.store import StoredModel, save_model
from training import artifacts
from training.backbone import backbone_onnx, choice
from training.config import TrainConfig
from training.data.dataset import Dataset, SplitArrays, load_dataset
from training.evaluate import Evaluated, bce, evaluate_model
from training.features import FeatureSet, compute_features
from training.head import (
    HeadResult,
    estimate_steps,
    fold_assignment,
    head_scores,
    oof_scores,
    train_heads,
)

log = logging.getLogger(__name__)
Say = Callable[[str], None]


@dataclass
class TrainResult:
    stored: StoredModel
    manifest: Manifest
    feature_seconds: float
    head_seconds: float
    total_seconds: float
    stopped: str
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds, in the order they ran
    stages_cpu: dict[str, float] = field(default_factory=dict)  # stage -> CPU seconds of the process


class Stages:
    """Wall and CPU seconds (all threads of the process) per named stage, in the order they ended.

    CPU seconds say what a stage costs when other processes share the cores and stretch the wall time.
    Stages run in the side thread (thumbnails, curves) overlap the main thread's: their seconds do not
    add up to the total, and process CPU seconds of overlapping stages count each other's.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started, cpu = time.monotonic(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu

    def run(self, name: str, fn: Callable, *args, **kwargs):
        """`fn(*args, **kwargs)` timed as stage `name` (for work handed to another thread)."""
        with self(name):
            return fn(*args, **kwargs)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "manylabel"


def fit(images, labels_csv: Path, cfg: TrainConfig, *, say: Say = log.info) -> TrainResult:
    started = time.monotonic()
    clock = Stages()
    spec = choice(cfg.backbone).preprocessing()
    cache_root = Path(cfg.cache_dir or default_cache_dir())
    with ExitStack() as stack:
        with clock("data"):
            data = stack.enter_context(load_dataset(images, labels_csv, cfg, say=say))
        with clock("backbone"):
            onnx_path = backbone_onnx(cache_root, spec, cfg.backbone)
        with clock("features"):
            features = _features(data, onnx_path, spec, cache_root, cfg, say)
            split = data.arrays(features)
        workdir = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="manylabel-run-"))
        workdir.mkdir(parents=True, exist_ok=True)
        progress = artifacts.ProgressLog(workdir / artifacts.PROGRESS)
        progress.write(_features_event(features, cfg))
        # A side thread makes the thumbnails and draws the PR plots while the head trains and the
        # models export: that work waits on files or holds the GIL while numpy and onnxruntime
        # release it. Its errors surface when its results are joined.
        side = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="manylabel-side"))
        thumbnails = side.submit(clock.run, "thumbnails", _thumbnails, workdir, split, data, features, cfg)
        with clock("head"):
            folds = fold_assignment(len(split.y_train), cfg.folds, cfg.seed)
            result = _train(split, folds, cfg, progress, say)
        with clock("evaluate"):
            evaluated = {w: evaluate_head(w, result, split, folds, data.labels, cfg) for w in WHICH_MODELS}
        curves = side.submit(clock.run, "curves", artifacts.write_curves, workdir, evaluated, cfg.name)
        with clock("export"):
            batch, batch_features = data.parity_batch(spec, features)
            files = artifacts.write_models(workdir, onnx_path, spec, result, batch, batch_features)
        variants = _int8(workdir, evaluated, data, split, features, onnx_path, cfg, progress, clock, say)
        files += [v.file for vs in variants.values() for v in vs.values() if v.file]
        with clock("records"):
            files += artifacts.write_records(workdir, split, evaluated)
        with clock("side wait"):  # what the side thread had left when the main thread got here
            files += thumbnails.result() + curves.result()
        manifest = _manifest(workdir, files, result, evaluated, variants, split, data, cfg, progress, clock)
        with clock("store"):
            stored = save_model(workdir, manifest)
        if not cfg.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return TrainResult(
        stored,
        stored.manifest,
        features.seconds,
        clock.seconds["head"],
        time.monotonic() - started,
        result.stopped,
        clock.seconds,
        clock.cpu,
    )


def _features(data: Dataset, onnx_path, spec, cache_root, cfg: TrainConfig, say: Say) -> FeatureSet:
    def estimate(n: int, seconds: float) -> None:
        say(
            f"estimated feature time: {seconds:.0f} s for {n} uncached images "
            f"({n / max(seconds, 1e-9):.0f} img/s)"
        )

    thumbnails = artifacts.ThumbnailCache(cache_root)
    fs = compute_features(
        data.images,
        onnx_path=onnx_path,
        spec=spec,
        cache_root=cache_root,
        batch_size=cfg.feature_batch,
        workers=cfg.workers,
        device=cfg.device,
        on_estimate=estimate,
        # The thumbnails come from the arrays this pass decodes anyway: a cold run decodes once.
        on_decoded=lambda image, digest, array: thumbnails.put_array(digest, image.path, array),
    )
    say(
        f"features ({cfg.backbone}): {fs.cached} cached, {fs.computed} computed, "
        f"{len(fs.failed)} unreadable in {fs.seconds:.1f} s"
    )
    for reason in list(fs.failed.values())[:10]:
        say(f"  skipped {reason}")
    if len(fs.failed) > 10:
        say(f"  ... and {len(fs.failed) - 10} more unreadable images")
    return fs


def _features_event(fs: FeatureSet, cfg: TrainConfig) -> dict:
    return {
        "stage": "features",
        "backbone": cfg.backbone,
        "seconds": fs.seconds,
        "cached": fs.cached,
        "computed": fs.computed,
        "failed": len(fs.failed),
    }


def _int8(workdir, evaluated, data, split, fs, onnx_path, cfg, progress, clock, say) -> dict[str, dict]:
    """which -> {"int8": Variant} (training/int8_cache.py), or {} for each with `--int8 off`."""
    if cfg.int8 == "off":
        return {w: {} for w in evaluated}
    from training.int8_cache import fit_variants

    variants, event = fit_variants(
        workdir, {w: e.entry for w, e in evaluated.items()}, data, split, fs, backbone=onnx_path,
        spec=choice(cfg.backbone).preprocessing(), cache_root=Path(cfg.cache_dir or default_cache_dir()),
        workers=cfg.workers, stage=clock, say=say,
    )  # fmt: skip
    progress.write(event)
    return {w: {"int8": v} for w, v in variants.items()}


def _thumbnails(
    workdir: Path, split: SplitArrays, data: Dataset, fs: FeatureSet, cfg: TrainConfig
) -> list[str]:
    names = split.names_train + split.names_val
    cache_root = Path(cfg.cache_dir or default_cache_dir())
    return artifacts.write_thumbnails(
        workdir, names, data.paths, cfg.workers, digests=fs.digests, cache_dir=cache_root
    )


def _train(split, folds, cfg: TrainConfig, progress: artifacts.ProgressLog, say: Say) -> HeadResult:
    deadline = time.monotonic() + cfg.minutes * 60
    bar = tqdm(total=cfg.max_epochs, desc="training head", unit="epoch")
    t0 = time.monotonic()

    def on_epoch(row: dict) -> None:
        if row["epoch"] == 1:
            epochs, steps = estimate_steps(len(split.y_train), cfg, time.monotonic() - t0)
            say(
                f"estimated: at most {epochs} epochs, {steps} steps of {cfg.batch_size} "
                f"({1 + max(int(folds.max()) + 1, 0)} heads in lockstep, "
                f"~{epochs * (time.monotonic() - t0):.1f} s; early stop after {cfg.patience} epochs "
                f"without a lower smoothed validation loss)"
            )
            progress.write({"stage": "estimate", "epochs": epochs, "steps": steps})
            bar.total = epochs
        bar.update(1)
        bar.set_postfix(
            train=f"{row['train_loss']:.4f}", val=f"{row['val_loss']:.4f}", best=row["best_epoch"]
        )
        progress.write({"stage": "train", **row})

    result = train_heads(
        split.x_train,
        split.y_train,
        split.x_val,
        split.y_val,
        cfg,
        folds,
        on_epoch=on_epoch,
        deadline=deadline,
    )
    bar.close()
    say(
        f"stopped after epoch {result.last_epoch}: {result.stopped}; best epoch {result.best_epoch} "
        f"(val loss {result.best_val_loss:.4f}), last val loss {result.last_val_loss:.4f}"
    )
    return result


def evaluate_head(which: str, result: HeadResult, split, folds, labels, cfg: TrainConfig) -> Evaluated:
    """Scores, out-of-fold thresholds and statistics of `best` or `last` (the manifest's model entry)."""
    model = result.best if which == "best" else result.last
    scores = {
        "train": head_scores(model, split.x_train, result.mean, result.std),
        "validation": head_scores(model, split.x_val, result.mean, result.std),
    }
    y = {"train": split.y_train, "validation": split.y_val}
    losses = {s: bce(y[s], scores[s]) for s in scores}
    return evaluate_model(
        file=f"{which}.onnx",
        epoch=result.best_epoch if which == "best" else result.last_epoch,
        val_loss=result.best_val_loss if which == "best" else result.last_val_loss,
        labels=labels,
        y=y,
        scores=scores,
        oof=oof_scores(model, split.x_train, folds, result.mean, result.std),
        losses=losses,
        threshold_source=cfg.threshold_source,
        min_positives=cfg.min_positives,
    )


def _manifest(
    workdir: Path,
    files: list[str],
    result: HeadResult,
    evaluated: dict[str, Evaluated],
    variants: dict[str, dict],
    split: SplitArrays,
    data: Dataset,
    cfg: TrainConfig,
    progress: artifacts.ProgressLog,
    clock: Stages,
) -> Manifest:
    rung = choice(cfg.backbone)
    progress.write(
        {
            "stage": "timing",
            "seconds": {k: round(v, 3) for k, v in clock.seconds.items()},
            "cpu_seconds": {k: round(v, 3) for k, v in clock.cpu.items()},
        }
    )
    progress.write({"stage": "export", "files": files})
    files.append(artifacts.PROGRESS)
    manifest = Manifest(
        name=cfg.name,
        labels=data.labels,
        label_counts={
            "train": split.counts(split.y_train, data.labels),
            "validation": split.counts(split.y_val, data.labels),
        },
        backbone=rung.entry,
        preprocessing=rung.preprocessing(),
        models={w: e.entry.model_copy(update={"variants": variants[w]}) for w, e in evaluated.items()},
        files=[file_entry(workdir, f) for f in files],
        training={
            **cfg.to_json(),
            "stopped": result.stopped,
            "history_epochs": len(result.history),
            "unreadable_images": len(split.failed),
            "train_images": len(split.y_train),
            "validation_images": len(split.y_val),
            "seconds": {k: round(v, 3) for k, v in clock.seconds.items()},
        },
    )
    manifest.write(workdir)
    return manifest


def summary_json(manifest: Manifest) -> str:
    return json.dumps(
        {
            w: {s: m.model_dump(exclude={"per_label"}) for s, m in e.metrics.items()}
            for w, e in manifest.models.items()
        },
        indent=2,
    )
