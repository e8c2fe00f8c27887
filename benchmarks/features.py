"""Feature extraction throughput: manylabel's cold feature pass against raw onnxruntime, same images.

    python benchmarks/features.py DATASET_DIR [DATASET_DIR ...] [--limit 400] [--out benchmarks/results]

Both sides use the same backbone ONNX (exported once into a temporary cache) and the same
onnxruntime session (`training.features.open_session`, CPU):
  * manylabel: `training.features.compute_features` with an empty feature cache, i.e. what a cold
    `manylabel train` pays: content hashing + decode (thread pool) + batch-32 inference + cache writes;
  * raw: `load_image` in a thread pool of `cores` threads feeding batch-32 `session.run`, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.manifest import Preprocessing  # noqa: E402
from service.preprocess import is_image_name, load_image  # noqa: E402
from training.backbone import backbone_onnx  # noqa: E402
from training.data.sources import ImageFile  # noqa: E402
from training.features import compute_features, open_session  # noqa: E402

BATCH = 32  # TrainConfig.feature_batch


def raw_features(paths: list[Path], onnx_path: Path, spec: Preprocessing) -> tuple[np.ndarray, float]:
    session = open_session(onnx_path, "cpu")
    name = session.get_inputs()[0].name
    session.run(None, {name: np.zeros((1, spec.image_size, spec.image_size, 3), np.uint8)})
    started = time.perf_counter()
    out, batch = [], []
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for array in pool.map(lambda p: load_image(p, spec), paths):
            batch.append(array)
            if len(batch) == BATCH:
                out.append(session.run(None, {name: np.stack(batch)})[0])
                batch = []
        if batch:
            out.append(session.run(None, {name: np.stack(batch)})[0])
    return np.concatenate(out), time.perf_counter() - started


def bench_features(folder: Path, limit: int, cache: Path) -> dict:
    spec = Preprocessing()
    images_dir = folder / "images" if (folder / "images").is_dir() else folder
    paths = sorted(p for p in images_dir.iterdir() if is_image_name(p.name))[:limit]
    onnx_path = backbone_onnx(cache, spec)
    images = [ImageFile(relpath=p.name, path=p) for p in paths]
    # A fresh cache root per run: every image is computed, none read back.
    feature_root = Path(tempfile.mkdtemp(prefix="features-", dir=cache))
    fs = compute_features(images, onnx_path=onnx_path, spec=spec, cache_root=feature_root, device="cpu")
    raw, raw_s = raw_features(paths, onnx_path, spec)
    same = bool(np.allclose(raw, fs.features, atol=1e-4)) if raw.shape == fs.features.shape else False
    return {
        "dataset": folder.name,
        "images": len(paths),
        "manylabel_images_per_s": round(len(paths) / fs.seconds, 1),
        "raw_images_per_s": round(len(paths) / raw_s, 1),
        "ratio": round(raw_s / fs.seconds, 3),
        "same_features": same,
    }


def run(folders: list[Path], limit: int) -> list[dict]:
    cache = Path(tempfile.mkdtemp(prefix="manylabel-bench-features-"))
    try:
        return [bench_features(f, limit, cache) for f in folders]
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+", type=Path)
    ap.add_argument("--limit", type=int, default=400, help="images per data set")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    rows = run(args.datasets, args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "features.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
