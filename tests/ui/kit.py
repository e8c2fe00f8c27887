"""Helpers for the page and inspect-API tests: a tiny model WITH records and thumbnails, and servers.

The model is `tests/tinymodel.py`'s, as in `tests/service/servekit.py` (uint8 NHWC "image"
(N, 32, 32, 3) -> mean colour -> Gemm -> Sigmoid -> "scores"), and adds what the inspect views read:
`records.npz` (per-image truth and scores of 30 train and 20 validation images, drawn so that the
labels overlap and a threshold moves the statistics) and `thumbnails.zip` (one JPEG per row, except
`MISSING_THUMBNAIL`). No torch: everything is made here with numpy, Pillow and onnx.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from support.bentoserve import free_port, start_serve, stop, wait_ready
from support.tinymodel import SAVE_SCRIPT, tiny_onnx

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
MODEL_NAME = "tiny-ui"
LABELS = ["cat", "dog", "bird"]
SIZE = 32
THRESHOLDS = {"best": [0.5, 0.5, 0.5], "last": [0.4, 0.6, 0.5]}
PROFILES = {"high_precision": [0.7, 0.7, 0.7], "high_recall": [0.3, 0.3, 0.3]}
N_TRAIN, N_VALIDATION = 30, 20
# Names with folders, a space and an accent: the image route must look them up exactly, as names.
NAMES = [f"train/img_{i:03d}.jpg" for i in range(N_TRAIN)] + [
    "val/été 00.jpg" if i == 0 else f"val/photo {i:02d}.jpg" for i in range(N_VALIDATION)
]
MISSING_THUMBNAIL = "train/img_029.jpg"  # its row has no JPEG in thumbnails.zip
TOKEN = "ui-test-token"
SERVER_ENV = {"MANYLABEL_MODEL": MODEL_NAME, "MANYLABEL_PROVIDER": "cpu", "MANYLABEL_MAX_FILES": "20"}
# --- the model --------------------------------------------------------------------------------------


def records(seed: int = 0) -> dict[str, np.ndarray]:
    """Truth with ~40% positives and scores that separate them only roughly (AP well below 1)."""
    rng = np.random.default_rng(seed)
    n, n_labels = len(NAMES), len(LABELS)
    y = rng.random((n, n_labels)) < 0.4
    y[~y.any(1), 0] = True  # every image has a label
    split = np.array(["train"] * N_TRAIN + ["validation"] * N_VALIDATION)

    def scores(noise_seed: int) -> np.ndarray:
        noise = np.random.default_rng(noise_seed).normal(0, 1.8, (n, n_labels))
        return (1 / (1 + np.exp(-(1.6 * (2 * y - 1) + noise)))).astype(np.float32)

    best, last = scores(1), scores(2)
    oof = {
        w: np.where((split == "train")[:, None], s, np.nan).astype(np.float32)
        for w, s in (("best", best), ("last", last))
    }
    return {
        "names": np.array(NAMES),
        "split": split,
        "y_true": y.astype(np.uint8),
        "scores_best": best,
        "scores_last": last,
        "oof_best": oof["best"],
        "oof_last": oof["last"],
    }


def thumbnail(row: int) -> bytes:
    rng = np.random.default_rng(100 + row)
    pixels = np.full((48, 48, 3), rng.integers(40, 220, 3), np.uint8)
    pixels[12:36, 12:36] = 255 - pixels[12:36, 12:36]
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def build_model(folder: Path) -> None:
    """best.onnx, last.onnx, records.npz, thumbnails.zip and a manifest listing them, in `folder`."""
    from service.manifest import Backbone, Manifest, ModelEntry, Preprocessing, file_entry
    from service.metrics import split_metrics

    folder.mkdir(parents=True, exist_ok=True)
    tiny_onnx(folder / "best.onnx", seed=1, n_labels=len(LABELS), size=SIZE)
    tiny_onnx(folder / "last.onnx", seed=2, n_labels=len(LABELS), size=SIZE)
    data = records()
    np.savez(folder / "records.npz", **data)
    with zipfile.ZipFile(folder / "thumbnails.zip", "w") as archive:
        for row, name in enumerate(NAMES):
            if name != MISSING_THUMBNAIL:
                archive.writestr(f"{row:06d}.jpg", thumbnail(row))
    y = data["y_true"].astype(bool)
    splits = {s: data["split"] == s for s in ("train", "validation")}

    def entry(which: str, epoch: int) -> ModelEntry:
        th = np.array(THRESHOLDS[which])
        scores = data[f"scores_{which}"]
        return ModelEntry(
            file=f"{which}.onnx",
            epoch=epoch,
            val_loss=0.4,
            thresholds=THRESHOLDS[which],
            threshold_source="oof",
            profiles=PROFILES,
            metrics={s: split_metrics(y[rows], scores[rows], th, LABELS) for s, rows in splits.items()},
        )

    files = ["best.onnx", "last.onnx", "records.npz", "thumbnails.zip"]
    Manifest(
        name=MODEL_NAME,
        labels=LABELS,
        label_counts={
            s: dict(zip(LABELS, y[rows].sum(0).tolist(), strict=True)) for s, rows in splits.items()
        },
        backbone=Backbone(id="tiny-mean-rgb", package="tests", feature_dim=3),
        preprocessing=Preprocessing(image_size=SIZE),
        models={"best": entry("best", 3), "last": entry("last", 5)},
        files=[file_entry(folder, f) for f in files],
    ).write(folder)


def image_bytes(seed: int, *, size: tuple[int, int] = (64, 48), fmt: str = "JPEG") -> bytes:
    """A deterministic picture whose mean colour, hence its scores, depends on `seed`."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = np.clip(rng.integers(0, 256, 3)[None, None, :] + rng.normal(0, 8, (h, w, 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


# --- servers ----------------------------------------------------------------------------------------


def store_env(home: Path, **extra: str) -> dict[str, str]:
    # The developer's own MANYLABEL_* variables (a token, another model) must not leak into the server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANYLABEL_")}
    env.update({"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **SERVER_ENV, **extra})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def save_to_store(model_dir: Path, home: Path) -> str:
    """Save the model into the store at `home` in a subprocess (this process's BentoML stays put)."""
    run = subprocess.run(
        [PYTHON, "-c", SAVE_SCRIPT, str(model_dir)], env=store_env(home), capture_output=True, text=True
    )
    if run.returncode:
        raise RuntimeError(f"saving the tiny model failed:\n{run.stderr[-4000:]}")
    return run.stdout.strip()


@dataclass
class Server:
    """A `bentoml serve` subprocess over the store at `home`."""

    home: Path
    log: Path
    env: dict[str, str]
    url: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @classmethod
    def start(cls, home: Path, log: Path, **env: str) -> Server:
        server = cls(home=home, log=log, env=store_env(home, **env))
        port = free_port()
        server.url = f"http://127.0.0.1:{port}"
        server.proc = start_serve(server.env, log, port)
        try:
            wait_ready(server.url, server.proc, log)
        except RuntimeError:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        stop(self.proc)
