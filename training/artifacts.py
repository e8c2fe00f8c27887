"""The files of a trained model, written into the run's work dir before it goes to the store.

- best.onnx / last.onnx: fused graphs (checked against torch before they are written)
- records.npz: per-image names, split, ground truth and scores (for inspecting without re-inference)
- pr_curves.json, pr_best.png, pr_last.png: precision-recall curves with the operating point
- thumbnails.zip: small JPEGs of the train/validation images, member `{row:06d}.jpg`
- progress.jsonl: the training progress, one JSON object per line
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import onnx

from service.manifest import Preprocessing, atomic_write_bytes
from training.export import check_parity, fold_standardisation, fuse, torch_reference

PROGRESS = "progress.jsonl"
RECORDS = "records.npz"
CURVES = "pr_curves.json"


class ProgressLog:
    """Append-only JSON lines a UI can follow while training runs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def write(self, row: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **row}, default=str) + "\n")


def write_models(
    workdir: Path,
    backbone_path: Path,
    spec: Preprocessing,
    result,
    parity_batch: np.ndarray,
    *,
    output_name: str = "scores",
) -> list[str]:
    from training.backbone import load_backbone

    backbone = onnx.load(str(backbone_path))
    extractor = load_backbone(spec)
    written = []
    for which, head in (("best", result.best), ("last", result.last)):
        layers = fold_standardisation(head.weights(0), result.mean, result.std)
        fused = fuse(backbone, layers, output_name=output_name)
        check_parity(fused, torch_reference(extractor, layers, parity_batch), parity_batch, spec)
        atomic_write_bytes(workdir / f"{which}.onnx", fused.SerializeToString())
        written.append(f"{which}.onnx")
    return written


def write_records(workdir: Path, split, evaluated: dict) -> list[str]:
    n_train, n_val = len(split.y_train), len(split.y_val)
    arrays = {
        "names": np.array(split.names_train + split.names_val),
        "split": np.array(["train"] * n_train + ["validation"] * n_val),
        "y_true": np.concatenate([split.y_train, split.y_val]).astype(np.uint8),
    }
    for which, ev in evaluated.items():
        arrays[f"scores_{which}"] = np.concatenate([ev.scores["train"], ev.scores["validation"]]).astype(
            np.float32
        )
        if ev.oof is not None:
            pad = np.full((n_val, ev.oof.shape[1]), np.nan, np.float32)
            arrays[f"oof_{which}"] = np.concatenate([ev.oof.astype(np.float32), pad])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(workdir / RECORDS, buf.getvalue())
    return [RECORDS]


def write_curves(workdir: Path, evaluated: dict, name: str) -> list[str]:
    from training.plots import plot_pr_curves

    curves = {which: ev.curves for which, ev in evaluated.items()}
    atomic_write_bytes(workdir / CURVES, json.dumps(curves).encode())
    written = [CURVES]
    for which, ev in evaluated.items():
        path = workdir / f"pr_{which}.png"
        plot_pr_curves(ev.curves["validation"], path, title=f"{name} — {which} model, validation")
        written.append(path.name)
    return written


THUMBNAILS = "thumbnails.zip"
THUMBNAIL_SIZE = 192


def _thumbnail(path: Path) -> bytes | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            img = _upright(img).convert("RGB")
            img.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=80)
            return buf.getvalue()
    except Exception:  # unreadable images were left out of training already
        return None


def _upright(img):  # PIL.Image.Image -> PIL.Image.Image
    """Turned by its EXIF orientation, or left as stored when that metadata is corrupt."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # corrupt EXIF raises struct.error, TypeError...; the pixels are still good
        return img


def write_thumbnails(workdir: Path, names: list[str], paths: dict[str, Path], workers: int = 2) -> list[str]:
    """Small JPEGs of the train/validation images, member `{row:06d}.jpg` for records row `row`.

    Stored with the model so the inspect views work without the original image folder.
    """
    import zipfile
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    tmp = workdir / f".{THUMBNAILS}.tmp"
    with ThreadPoolExecutor(workers) as pool, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        thumbs = pool.map(lambda n: _thumbnail(paths[n]), names)
        for row, data in enumerate(
            tqdm(thumbs, total=len(names), desc="thumbnails", unit="img", leave=False)
        ):
            if data is not None:
                zf.writestr(f"{row:06d}.jpg", data)
    tmp.replace(workdir / THUMBNAILS)
    return [THUMBNAILS]
