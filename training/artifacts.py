"""The files of a trained model, written into the run's work dir before it goes to the store.

- best.onnx / last.onnx: fused graphs (checked against the head's reference before they are written)
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

from service.errors import ImageTooLargeError, InvalidImageError
from service.manifest import Preprocessing, atomic_write_bytes
from service.preprocess import thumbnail_jpeg
from training.features import write_cache_file

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
    parity_features: np.ndarray,
    *,
    output_name: str = "scores",
) -> list[str]:
    """best.onnx and last.onnx, each fused and checked before it is written.

    The reference is the head in float64 on `parity_features`, the cached backbone features of the
    images in `parity_batch`: the fused graph must turn those raw pixels into the scores training
    computed. The backbone graph itself was checked against torch when it was exported (backbone.py),
    so a warm run never loads torch.
    """
    import onnx  # here, not at import time: `manylabel --help` and the head need none of it

    from training.export import check_parity, fold_standardisation, fuse, head_reference

    backbone = onnx.load(str(backbone_path))
    written = []
    for which, head in (("best", result.best), ("last", result.last)):
        layers = fold_standardisation(head.weights(0), result.mean, result.std)
        fused = fuse(backbone, layers, output_name=output_name)
        check_parity(fused, head_reference(parity_features, layers), parity_batch, spec)
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
THUMBNAIL_QUALITY = 80


def _thumbnail(path: Path) -> bytes | None:
    try:
        return thumbnail_jpeg(path, size=THUMBNAIL_SIZE, quality=THUMBNAIL_QUALITY)
    except (InvalidImageError, ImageTooLargeError, OSError):  # left out of training already
        return None


def _upright_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as `load_image` turns it (EXIF orientations 5-8 swap them)."""
    from PIL import Image

    with Image.open(path) as img:
        width, height = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # corrupt EXIF: load_image decodes the image as stored, too
            orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def write_thumbnails(
    workdir: Path,
    names: list[str],
    paths: dict[str, Path],
    workers: int = 2,
    *,
    digests: dict[str, str] | None = None,
    cache_dir: Path | None = None,
) -> list[str]:
    """Small JPEGs of the train/validation images, member `{row:06d}.jpg` for records row `row`.

    Stored with the model so the inspect views work without the original image folder. With
    `digests` (name -> sha256) and `cache_dir`, each thumbnail is made once per image content and
    reused by later runs, like the features.
    """
    import zipfile
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    cache = ThumbnailCache(cache_dir) if cache_dir is not None and digests is not None else None

    def one(name: str) -> bytes | None:
        if cache is None:
            return _thumbnail(paths[name])
        return cache.get(digests[name], paths[name])

    tmp = workdir / f".{THUMBNAILS}.tmp"
    with ThreadPoolExecutor(workers) as pool, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        thumbs = pool.map(one, names)
        for row, data in enumerate(
            tqdm(thumbs, total=len(names), desc="thumbnails", unit="img", leave=False)
        ):
            if data is not None:
                zf.writestr(f"{row:06d}.jpg", data)
    tmp.replace(workdir / THUMBNAILS)
    return [THUMBNAILS]


class ThumbnailCache:
    """One JPEG per image content hash under `root/thumbnails/<size>/ab/<sha256>.jpg`."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "thumbnails" / f"{THUMBNAIL_SIZE}px-q{THUMBNAIL_QUALITY}"
        self.made = 0  # thumbnails decoded by this instance (the rest came from the cache)

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.jpg"

    def put_array(self, digest: str, path: Path, array: np.ndarray) -> None:
        """Make the thumbnail from the feature pass's decoded array instead of decoding the file again.

        The array is the upright image stretched to a square; the file's header gives the aspect
        ratio back. Measured on the clothing set: ~0.4 ms an image instead of ~2 ms.
        """
        if self._path(digest).is_file():
            return
        from PIL import Image

        width, height = _upright_size(path)
        scale = min(1.0, THUMBNAIL_SIZE / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        buf = io.BytesIO()
        thumb = Image.fromarray(array).resize(size, Image.Resampling.BILINEAR)
        thumb.save(buf, "JPEG", quality=THUMBNAIL_QUALITY)
        write_cache_file(self._path(digest), buf.getvalue())

    def get(self, digest: str, path: Path) -> bytes | None:
        cached = self._path(digest)
        try:
            data = cached.read_bytes()
            if data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9"):  # whole JPEG
                return data
        except OSError:
            pass
        data = _thumbnail(path)
        if data is not None:
            self.made += 1
            write_cache_file(cached, data)
        return data
