"""Calibrated int8 copies of a model's graphs, checked against fp32 before the manifest names them.

Static QDQ quantization (`onnxruntime.quantization.quantize_static` after `quant_pre_process`):
per-channel 7-bit int8 weights, uint8 activations, MinMax ranges calibrated on a sample of the
model's own training images; the backbone is quantized, the head stays fp32. Each copy runs beside
its fp32 original on the validation images (`compare`): one that loses more than `MAP_TOLERANCE`
validation mAP is dropped (the manifest keeps its numbers and the reason), that model serves fp32.

`fit()` makes its variants through training/int8_cache.py (the quantized backbone cached across
retrains); `add_int8_variants` does it for a stored model (`manylabel quantize`). It lives in
training, not the core: onnxruntime.quantization imports `onnx` and sympy, which serving leaves out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import InvalidImageError
from service.manifest import WHICH_MODELS, Manifest, Preprocessing, Variant, VariantCheck, file_entry
from service.metrics import split_metrics
from service.preprocess import load_image

log = logging.getLogger(__name__)
Say = Callable[[str], None]
ImageSource = Path | str | bytes  # what `service.preprocess.load_image` reads

MAP_TOLERANCE = 0.005  # validation mAP an int8 copy may lose against fp32 and still be kept
CALIBRATION_IMAGES = 128  # measured enough on voc5; more only lengthens calibration
CALIBRATION_BATCH = 8
SCORE_BATCH = 32
INT8 = "int8"


def int8_file(fp32_file: str) -> str:
    """`best.onnx` -> `best.int8.onnx`."""
    stem = fp32_file[: -len(".onnx")] if fp32_file.endswith(".onnx") else fp32_file
    return f"{stem}.int8.onnx"


def method_text(images: int) -> str:
    import onnxruntime as ort

    return (
        f"onnxruntime {ort.__version__} quantize_static: QDQ, per-channel int8 weights (7-bit range), "
        f"uint8 activations, MinMax calibration on {images} training images"
    )


# --- images ---------------------------------------------------------------------------------------


def decode(
    sources: Sequence[ImageSource], spec: Preprocessing, *, workers: int | None = None
) -> tuple[np.ndarray, list[int]]:
    """(N, S, S, 3) uint8 of the readable `sources`, and their indices in `sources` (unreadable skipped)."""
    size = spec.image_size

    def one(source: ImageSource) -> np.ndarray | None:
        try:
            return load_image(source, spec)
        except (InvalidImageError, OSError) as exc:
            log.warning("skipped %s: %s", source if not isinstance(source, bytes) else "(bytes)", exc)
            return None

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        decoded = list(pool.map(one, sources))
    kept = [i for i, image in enumerate(decoded) if image is not None]
    if not kept:
        return np.zeros((0, size, size, 3), np.uint8), []
    return np.stack([decoded[i] for i in kept]), kept


def sample(n: int, k: int, *, seed: int = 0) -> list[int]:
    """`k` of `range(n)`, drawn without replacement by `seed`, in order."""
    if n <= k:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, k, replace=False).tolist())


# --- quantization ---------------------------------------------------------------------------------


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over an in-memory (N, S, S, 3) array."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = CALIBRATION_BATCH) -> None:
        self._batches = iter([{input_name: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def quantize_graph(source: Path, target: Path, calibration: np.ndarray, *, input_name: str) -> None:
    """Write the static-QDQ int8 copy of the fp32 graph `source` to `target` (atomically).

    `reduce_range` (7-bit weights): x86 CPUs without VNNI (this AVX2 EPYC) saturate the int16 sums of
    uint8 x int8 products; without it the tiny test model's scores moved by 0.65 here (0.017 with it).

    No `CalibMaxIntermediateOutputs`: in onnxruntime 1.31 it drops the ranges of every full chunk
    (`collect_data` clears them without merging), so only the last partial chunk would count. The
    MinMax calibrator keeps two scalars per tensor and batch, so memory stays small without it.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ValueError("no calibration images")
    with tempfile.TemporaryDirectory(prefix="manylabel-int8-") as tmp, _quiet_root_logger():
        prepared, out = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            _Batches(calibration, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        tmp_target = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(out, tmp_target)
        os.replace(tmp_target, target)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger (one INFO line per rescaled weight)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


# --- validation -----------------------------------------------------------------------------------


def _sessions(paths: dict[tuple[str, str], Path]) -> dict[tuple[str, str], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # decode threads run beside
    return {
        key: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        for key, p in paths.items()
    }


def score_validation(
    sessions: dict[tuple[str, str], Any], manifest: Manifest, validation: Sequence[ImageSource], y: np.ndarray
) -> tuple[dict[tuple[str, str], np.ndarray], np.ndarray]:
    """Scores of every graph on the readable validation images, and their truth rows."""
    spec, out = manifest.preprocessing, manifest.output_name
    scores: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in sessions}
    rows: list[int] = []
    for start in range(0, len(validation), SCORE_BATCH):  # decode a batch at a time: bounded memory
        images, kept = decode(validation[start : start + SCORE_BATCH], spec)
        rows += [start + i for i in kept]
        for key, session in sessions.items():
            if len(images):
                scores[key].append(session.run([out], {spec.input_name: images})[0])
    n_labels = y.shape[1]
    joined = {k: np.concatenate(v) if v else np.zeros((0, n_labels), np.float32) for k, v in scores.items()}
    return joined, y[rows]


def compare(
    y_true: np.ndarray, fp32: np.ndarray, int8: np.ndarray, thresholds: Sequence[float], labels: Sequence[str]
) -> VariantCheck:
    """int8 against fp32 scores of the same images: mAP and micro-F1 at `thresholds`, score gaps."""
    th = np.asarray(thresholds, dtype=np.float64)
    a = split_metrics(y_true, fp32, th, labels)
    b = split_metrics(y_true, int8, th, labels)
    diff = np.abs(int8.astype(np.float64) - fp32.astype(np.float64))
    return VariantCheck(
        images=int(len(y_true)),
        map_fp32=a.map,
        map=b.map,
        micro_f1_fp32=a.micro_f1,
        micro_f1=b.micro_f1,
        max_score_diff=float(diff.max()) if diff.size else 0.0,
        mean_score_diff=float(diff.mean()) if diff.size else 0.0,
    )


def verdict(check: VariantCheck, tolerance: float) -> str | None:
    """None to keep the variant, else why it is dropped. mAP decides; micro-F1 when mAP is undefined."""
    if check.images == 0:
        return "no readable validation image to check it on"
    if check.map is not None and check.map_fp32 is not None:
        loss, what = check.map_fp32 - check.map, "mAP"
    else:
        loss, what = check.micro_f1_fp32 - check.micro_f1, "micro-F1 (mAP undefined: no positives)"
    if loss > tolerance:
        return f"it loses {loss:.4f} validation {what} against fp32, more than the tolerance {tolerance:g}"
    return None


# --- the entry point --------------------------------------------------------------------------------


def add_int8_variants(
    model_dir: Path,
    manifest: Manifest,
    calibration: Sequence[ImageSource],
    validation: Sequence[ImageSource],
    y_validation: np.ndarray,
    *,
    calibration_images: int = CALIBRATION_IMAGES,
    tolerance: float = MAP_TOLERANCE,
    seed: int = 0,
    say: Say = log.info,
) -> Manifest:
    """Make, check and record int8 copies of the best and last graphs in `model_dir`.

    `calibration`: training images (at most `calibration_images` are drawn by `seed`);
    `validation` + `y_validation` ((N, L) 0/1, aligned with `manifest.labels`): the held-out images
    both precisions are scored on. A copy losing more than `tolerance` validation mAP is dropped
    (its file removed, its numbers and reason kept). Writes `<which>.int8.onnx` and manifest.json into
    `model_dir` and returns the new manifest (files listed with sha256); fp32 files are untouched.
    """
    model_dir = Path(model_dir)
    spec = manifest.preprocessing
    y_validation = np.asarray(y_validation)
    if y_validation.shape != (len(validation), len(manifest.labels)):
        expected = (len(validation), len(manifest.labels))
        raise ValueError(f"y_validation has shape {y_validation.shape}; expected {expected}")
    started = time.monotonic()
    picked = sample(len(calibration), calibration_images, seed=seed)
    cal, _ = decode([calibration[i] for i in picked], spec)
    say(f"int8: calibrating on {len(cal)} training images, validating on {len(validation)} images")
    method = method_text(len(cal))
    made, variants = _quantize_all(model_dir, manifest, cal, method)
    if made:  # every graph scores each validation image once, right after it is decoded
        paths = {(w, "fp32"): model_dir / manifest.models[w].file for w in made}
        paths |= {(w, INT8): model_dir / file for w, file in made.items()}
        scores, y = score_validation(_sessions(paths), manifest, validation, y_validation)
    for which, file in made.items():
        entry = manifest.models[which]
        check = compare(y, scores[(which, "fp32")], scores[(which, INT8)], entry.thresholds, manifest.labels)
        reason = verdict(check, tolerance)
        if reason is not None:
            (model_dir / file).unlink(missing_ok=True)
        kept = {"file": file, "kept": True} if reason is None else {"kept": False, "reason": reason}
        variants[which] = Variant(**kept, method=method, calibration_images=len(cal), validation=check)
    for which in WHICH_MODELS:
        say(describe(which, variants[which]))
    updated = _with_variants(model_dir, manifest, variants)
    say(f"int8: done in {time.monotonic() - started:.1f} s")
    return updated


def _quantize_all(
    model_dir: Path, manifest: Manifest, cal: np.ndarray, method: str
) -> tuple[dict[str, str], dict[str, Variant]]:
    """Quantize best and last (backbone int8, head fp32: `int8_cache.quantize_fused`): which -> int8
    file, and the dropped variant of any that failed. Shared graphs and backbones: quantized once."""
    from training.int8_cache import quantize_fused

    sha = {f.path: f.sha256 for f in manifest.files}
    made, failed = {}, {}  # which -> int8 file; which -> the dropped Variant
    done: dict[str, str] = {}  # fp32 sha256 -> int8 file already written
    done_backbones: dict[str, object] = {}  # backbone sha256 -> its int8 graph
    for which in WHICH_MODELS:
        entry = manifest.models[which]
        target = int8_file(entry.file)
        digest = sha.get(entry.file, which)
        try:
            if digest in done:
                shutil.copyfile(model_dir / done[digest], model_dir / target)
            else:
                quantize_fused(
                    model_dir / entry.file,
                    model_dir / target,
                    cal,
                    input_name=manifest.preprocessing.input_name,
                    quantized=done_backbones,
                )
        except Exception as exc:  # a model that cannot be quantized still serves fp32
            log.exception("int8 quantization of %s failed", entry.file)
            reason = f"quantization failed: {type(exc).__name__}: {str(exc)[:300]}"
            failed[which] = Variant(kept=False, reason=reason, method=method)
            continue
        done[digest] = target
        made[which] = target
    return made, failed


def _with_variants(model_dir: Path, manifest: Manifest, variants: dict[str, Variant]) -> Manifest:
    stale = {v.file for e in manifest.models.values() for v in e.variants.values() if v.file}
    fresh = [v.file for v in variants.values() if v.file]
    files = [f for f in manifest.files if f.path not in stale and f.path not in fresh]
    files += [file_entry(model_dir, f) for f in dict.fromkeys(fresh)]
    raw = manifest.model_dump(mode="json")
    raw["files"] = [f.model_dump(mode="json") for f in files]
    for which, variant in variants.items():
        raw["models"][which]["variants"] = {INT8: variant.model_dump(mode="json")}
    updated = Manifest.model_validate(raw)
    updated.verify_files(model_dir)
    updated.write(model_dir)
    return updated


def describe(which: str, variant: Variant) -> str:
    """One line for the training output."""
    c, numbers = variant.validation, ""
    if c is not None:
        maps = " -> ".join("n/a" if v is None else f"{v:.4f}" for v in (c.map_fp32, c.map))
        numbers = (
            f"validation mAP {maps}, micro-F1 {c.micro_f1_fp32:.4f} -> {c.micro_f1:.4f}, "
            f"max |score diff| {c.max_score_diff:.3f} on {c.images} images: "
        )
    if variant.kept:
        return f"int8 {which}: {numbers}kept ({variant.file})"
    return f"int8 {which}: {numbers}NOT kept, {which} serves fp32 only: {variant.reason}"
