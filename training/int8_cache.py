"""int8 variants in `fit()`: the frozen backbone quantized once and cached, the head kept fp32.

Quantizing a whole fused graph costs 13-60 s a run, but the backbone is frozen and the same in every
retrain, so it is quantized once per (backbone graph, calibration images) and kept beside the fp32
backbone graph; the head stays fp32 (a small MLP: int8 buys it nothing). A run then

1. picks the calibration images by content, the `CALIBRATION_IMAGES` train images with the smallest
   sha256: label edits, other settings and retrains of the same images reuse the quantized backbone;
2. takes the validation images' int8 features from the feature cache (keyed by the int8 graph, as the
   fp32 features are keyed by theirs), so a warm run decodes no image;
3. scores them with each model's own head, cut from its fused fp32 graph (`export.head_graph`, whatever
   the head is), against the same head on the fp32 features: validation mAP, micro-F1, largest score
   difference (`quantize.compare`); a model losing more than `quantize.MAP_TOLERANCE` mAP serves fp32
   only, and the manifest says why;
4. writes `<which>.int8.onnx`, the int8 backbone + that head (`export.attach`): one served graph per
   precision, checked on a few validation images against the scores of step 3.

`manylabel quantize` (a model stored without int8) still quantizes the fused graph (training.quantize).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.files import atomic_write_bytes
from service.manifest import Preprocessing, Variant, sha256_file
from service.preprocess import load_image
from training import quantize
from training.data.sources import ImageFile
from training.features import FeatureCache, FeatureSet, cache_key, compute_features

if TYPE_CHECKING:
    from training.data.dataset import Dataset, SplitArrays

log = logging.getLogger(__name__)
Stage = Callable[[str], contextlib.AbstractContextManager]
PARITY_IMAGES = 4
RECIPE = 2  # bump when the quantization recipe changes (2: reduce_range): cached int8 backbones rebuild
REUSE_OVERLAP = 0.75  # a cached int8 backbone calibrated on this share of today's sample is reused


def calibration_names(digests: Mapping[str, str], train: Sequence[str], k: int) -> list[str]:
    """The `k` train images with the smallest sha256, one per content: the same images whatever the
    labels, split settings or order, so retrains hit the cached int8 backbone."""
    first: dict[str, str] = {}
    for name in train:
        first.setdefault(digests[name], name)
    return [first[d] for d in sorted(first)[:k]]


def _base(backbone: Path, spec: Preprocessing) -> str:
    """What an int8 backbone depends on besides its calibration images: the fp32 graph's bytes, the
    preprocessing, onnxruntime's version and the recipe."""
    import onnxruntime as ort

    parts = [_sha256(backbone), spec.model_dump_json(), ort.__version__, str(RECIPE)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def int8_backbone_path(backbone: Path, spec: Preprocessing, digests: Sequence[str]) -> Path:
    """`<backbone id>-int8-<key>.onnx` beside the fp32 graph, keyed by `_base` and the calibration
    images' sha256."""
    key = hashlib.sha256("|".join([_base(backbone, spec), *sorted(digests)]).encode()).hexdigest()[:16]
    return backbone.parent / f"{_stem(backbone)}-int8-{key}.onnx"


def _stem(backbone: Path) -> str:
    return backbone.stem.rsplit("-", 1)[0]  # backbone_onnx names files `<id>-<key>.onnx`


def _sha256(path: Path) -> str:
    """The graph's sha256 from its export check record (backbone.py wrote it), else hashed."""
    try:
        return json.loads(path.with_suffix(".check.json").read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return sha256_file(path)


def _record(graph: Path) -> dict | None:
    """The build record of a cached int8 graph, None when missing or the file is damaged."""
    try:
        info = json.loads(graph.with_suffix(".check.json").read_text())
        return info if graph.is_file() and info["sha256"] == sha256_file(graph) else None
    except (OSError, ValueError, KeyError):
        return None


def _nearest(backbone: Path, base: str, digests: Sequence[str]) -> Path | None:
    """A cached int8 copy of `backbone` calibrated on at least `REUSE_OVERLAP` of `digests`: images
    added to a data set move a few into the smallest-sha256 sample, which barely moves MinMax ranges."""
    want, found = set(digests), []
    for record in backbone.parent.glob(f"{_stem(backbone)}-int8-*.check.json"):
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(record.read_text())
            share = len(want & set(info.get("digests", []))) / max(len(want), 1)
            if info.get("base") == base and share >= REUSE_OVERLAP:
                found.append((share, record.with_name(record.name.replace(".check.json", ".onnx"))))
    return next((graph for _, graph in sorted(found, reverse=True) if _record(graph)), None)


def quantized_backbone(
    backbone: Path, spec: Preprocessing, calibration: Sequence[tuple[Path, str]], *, workers: int = 2
) -> tuple[Path, str]:
    """The int8 copy of `backbone` calibrated on `calibration` ((path, sha256) pairs) and how it was
    had: "cached" (this sample's), "reused" (one calibrated on most of it: `_nearest`) or "built"."""
    digests = [d for _, d in calibration]
    target = int8_backbone_path(backbone, spec, digests)
    if _record(target) is not None:
        return target, "cached"
    base = _base(backbone, spec)
    if (near := _nearest(backbone, base, digests)) is not None:
        return near, "reused"
    images, _ = quantize.decode([p for p, _ in calibration], spec, workers=workers)
    started = time.monotonic()
    quantize.quantize_graph(backbone, target, images, input_name=spec.input_name)
    info = {"sha256": sha256_file(target), "base": base, "digests": sorted(digests)}
    info |= {"calibration_images": len(images), "seconds": round(time.monotonic() - started, 3)}
    atomic_write_bytes(target.with_suffix(".check.json"), json.dumps(info).encode())
    log.info("quantized %s to %s in %.1f s", backbone.name, target.name, info["seconds"])
    return target, "built"


def int8_features(
    images: Sequence[ImageFile], digests: Mapping[str, str], graph: Path, spec: Preprocessing, root: Path
) -> tuple[np.ndarray, list[int], int]:
    """Features of `images` from the int8 graph: (rows, indices of the images they belong to, how
    many were computed now). Cached per (int8 graph, image sha256) like the fp32 features."""
    cache = FeatureCache(root, cache_key(graph, spec))
    vectors = {im.relpath: v for im in images if (v := cache.load(digests[im.relpath])) is not None}
    todo = [im for im in images if im.relpath not in vectors]
    if todo:
        # CPU: the int8 graph is served on the CPU, and CUDA would run its QDQ pairs in float.
        fs = compute_features(todo, onnx_path=graph, spec=spec, cache_root=root, device="cpu")
        vectors.update(zip(fs.names, fs.features, strict=True))
    kept = [i for i, im in enumerate(images) if im.relpath in vectors]
    rows = np.stack([vectors[images[i].relpath] for i in kept]) if kept else np.zeros((0, 0), np.float32)
    return rows.astype(np.float32, copy=False), kept, len(todo)


def quantize_fused(
    source: Path,
    target: Path,
    calibration: np.ndarray,
    *,
    input_name: str,
    quantized: dict[str, Any] | None = None,
) -> None:
    """A fused graph's int8 copy as `fit()` makes it (backbone int8, head fp32; no `features` tensor:
    quantized whole). `quantized` (backbone sha256 -> int8 graph), shared, quantizes a backbone once."""
    import tempfile

    import onnx

    from training.export import attach, backbone_graph, head_graph

    fused = onnx.load(str(source))
    head = head_graph(fused)
    if not head.graph.node:
        quantize.quantize_graph(source, target, calibration, input_name=input_name)
        return
    backbone = backbone_graph(fused).SerializeToString()
    key, cache = hashlib.sha256(backbone).hexdigest(), {} if quantized is None else quantized
    if key not in cache:
        with tempfile.TemporaryDirectory(prefix="manylabel-int8-") as tmp:
            fp32, int8 = Path(tmp) / "backbone.onnx", Path(tmp) / "backbone.int8.onnx"
            fp32.write_bytes(backbone)
            quantize.quantize_graph(fp32, int8, calibration, input_name=input_name)
            cache[key] = onnx.load(str(int8))
    atomic_write_bytes(target, attach(cache[key], head).SerializeToString())


def _session(model: Any):  # onnx.ModelProto -> onnxruntime.InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def int8_variants(
    workdir: Path,
    models: Mapping[str, Any],
    *,
    backbone: Path,
    spec: Preprocessing,
    cache_root: Path,
    train: Sequence[ImageFile],
    validation: Sequence[ImageFile],
    digests: Mapping[str, str],
    x_val: np.ndarray,
    y_val: np.ndarray,
    labels: Sequence[str],
    workers: int = 2,
    stage: Stage = lambda _: contextlib.nullcontext(),
    say: Callable[[str], None] = log.info,
) -> tuple[dict[str, Variant], list[str], dict]:
    """int8 variants of the fused fp32 graphs in `workdir` (`models`: which -> ModelEntry).

    `x_val` / `y_val`: the fp32 features and truth of `validation`, row for row. Returns the variants
    (kept or dropped with the reason), the files written and a progress event.
    """
    tolerance, started = quantize.MAP_TOLERANCE, time.monotonic()
    picked = calibration_names(digests, [im.relpath for im in train], quantize.CALIBRATION_IMAGES)
    paths = {im.relpath: im.path for im in train}
    event: dict = {"stage": "int8", "calibration_images": len(picked)}
    method = f"backbone: {quantize.method_text(len(picked))}; head fp32"
    try:
        with stage("int8 backbone"):
            graph, how = quantized_backbone(
                backbone, spec, [(paths[n], digests[n]) for n in picked], workers=workers
            )
        with stage("int8 features"):
            x8, kept, computed = int8_features(validation, digests, graph, spec, cache_root)
        if not kept:
            raise ValueError("no validation image could be read for the check")
    except Exception as exc:  # a backbone that cannot be quantized: the models still serve fp32
        log.exception("int8 quantization of %s failed", backbone.name)
        reason = f"quantization failed: {type(exc).__name__}: {str(exc)[:300]}"
        say(f"int8: {reason}; fp32 only")
        return {w: Variant(kept=False, reason=reason, method=method) for w in models}, [], event
    event |= {"backbone": how, "features_computed": computed}
    said = {"built": "quantized now", "cached": "from the cache"}
    said["reused"] = f"from the cache, calibrated on >= {REUSE_OVERLAP:.0%} of this run's sample"
    say(
        f"int8: backbone {said[how]} ({graph.name}, {len(picked)} calibration images), "
        f"{computed} of {len(validation)} validation features computed"
    )
    variants, files = _check_and_write(
        workdir, models, graph, x8, x_val[kept], y_val[kept], [validation[i] for i in kept],
        spec=spec, labels=labels, method=method, calibration=len(picked), tolerance=tolerance, stage=stage,
    )  # fmt: skip
    for which, variant in variants.items():
        say(quantize.describe(which, variant))
    event |= {
        "kept": {w: v.kept for w, v in variants.items()},
        "seconds": round(time.monotonic() - started, 3),
    }
    served = ", ".join(f"{w} {'int8 + fp32' if v.kept else 'fp32 only'}" for w, v in variants.items())
    say(f"int8: {served}; int8 took {event['seconds']:.1f} s")
    return variants, files, event


def fit_variants(
    workdir: Path,
    models: Mapping[str, Any],
    data: Dataset,
    split: SplitArrays,
    fs: FeatureSet,
    **options: Any,
) -> tuple[dict[str, Variant], dict]:
    """`int8_variants` on `fit()`'s Dataset, SplitArrays and FeatureSet: the variants and the progress
    event."""
    names = set(split.names_val)
    variants, _, event = int8_variants(
        workdir,
        models,
        train=[s.image for s in data.train if s.image.relpath in fs.digests],
        validation=[s.image for s in data.validation if s.image.relpath in names],
        digests=fs.digests,
        x_val=split.x_val,
        y_val=split.y_val,
        labels=data.labels,
        **options,
    )
    return variants, event


def _check_and_write(
    workdir: Path,
    models: Mapping[str, Any],
    graph: Path,
    x8: np.ndarray,
    x32: np.ndarray,
    y: np.ndarray,
    images: Sequence[ImageFile],
    *,
    spec: Preprocessing,
    labels: Sequence[str],
    method: str,
    calibration: int,
    tolerance: float,
    stage: Stage,
) -> tuple[dict[str, Variant], list[str]]:
    import onnx

    from training.export import attach, head_graph

    variants: dict[str, Variant] = {}
    files: list[str] = []
    backbone = None
    for which, entry in models.items():
        with stage("int8 check"):
            head = head_graph(onnx.load(str(workdir / entry.file)))
            session = _session(head)
            fp32, int8 = (session.run(None, {"features": x})[0] for x in (x32, x8))
            check = quantize.compare(y, fp32, int8, entry.thresholds, labels)
            reason = quantize.verdict(check, tolerance)
        file = quantize.int8_file(entry.file)
        if reason is None:
            with stage("int8 export"):
                backbone = backbone or onnx.load(str(graph))
                reason = _write(workdir / file, attach(backbone, head), images[:PARITY_IMAGES], int8, spec)
        kept = {"file": file, "kept": True} if reason is None else {"kept": False, "reason": reason}
        variants[which] = Variant(**kept, method=method, calibration_images=calibration, validation=check)
        files += [file] if reason is None else []
    return variants, files


def _write(target: Path, model: Any, images: Sequence[ImageFile], want: np.ndarray, spec: Preprocessing):
    """Write the composed graph when it reproduces `want` (its scores from cached int8 features) on
    `images`; else the reason it is not kept."""
    from training.export import PARITY_ATOL

    batch = np.stack([load_image(im.path, spec, name=im.relpath) for im in images])
    got = _session(model).run(None, {spec.input_name: batch})[0]
    diff = float(np.max(np.abs(got.astype(np.float64) - want[: len(images)])))
    if not np.isfinite(diff) or diff > PARITY_ATOL:
        return f"the composed int8 graph differs from its checked scores by {diff:.2e} (> {PARITY_ATOL})"
    atomic_write_bytes(target, model.SerializeToString())
    return None
