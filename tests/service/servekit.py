"""Helpers for the service tests: the tiny model, test images, constants (imported by conftest)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from support.bentoserve import free_port, start_serve, stop, wait_ready
from support.tinymodel import SAVE_SCRIPT, tiny_onnx

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
MODEL_NAME = "tiny-test"
LABELS = ["cat", "dog", "traffic/light"]  # a slash, to check that bundles sanitise folder names
SIZE = 32
THRESHOLDS = {"best": [0.5, 0.5, 0.5], "last": [0.4, 0.6, 0.5]}
SERVER_ENV = {
    "MANYLABEL_MODEL": MODEL_NAME,
    "MANYLABEL_PROVIDER": "cpu",
    "MANYLABEL_MAX_FILES": "20",
    "MANYLABEL_MAX_REQUEST_BYTES": str(3 << 20),
    "MANYLABEL_MAX_ZIP_BYTES": str(2 << 20),
    "MANYLABEL_MAX_PIXELS": str(4_000_000),
    # The tiny model infers in microseconds: a short wait makes concurrent requests meet in a batch.
    "MANYLABEL_MAX_LATENCY_MS": "15",
    "MANYLABEL_MAX_BATCH_SIZE": "8",
}


def build_model(folder: Path, name: str = MODEL_NAME, seed: int = 1, *, int8: bool = False) -> None:
    """best.onnx, last.onnx and a valid manifest.json in `folder`; `seed` draws the heads. `int8`:
    also real int8 variants (training.quantize on 12 test images, always kept: a tiny model's
    validation numbers mean nothing), as `manylabel train` makes them."""
    from service.manifest import (
        Backbone,
        LabelMetrics,
        Manifest,
        ModelEntry,
        Preprocessing,
        SplitMetrics,
        file_entry,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tiny_onnx(folder / "best.onnx", seed=seed, n_labels=len(LABELS), size=SIZE)
    tiny_onnx(folder / "last.onnx", seed=seed + 1, n_labels=len(LABELS), size=SIZE)
    one = LabelMetrics(support=3, precision=0.75, recall=0.5, f1=0.6, ap=0.7)
    validation = SplitMetrics(
        images=9,
        accuracy=0.5,
        label_accuracy=0.8,
        micro_precision=0.75,
        micro_recall=0.5,
        micro_f1=0.6,
        map=0.7,
        per_label={label: one for label in LABELS},
    )
    manifest = Manifest(
        name=name,
        labels=LABELS,
        label_counts={"train": {label: 3 for label in LABELS}},
        backbone=Backbone(id="tiny-mean-rgb", package="tests", feature_dim=3),
        preprocessing=Preprocessing(image_size=SIZE),
        models={
            which: ModelEntry(
                file=f"{which}.onnx",
                epoch=3 if which == "best" else 5,
                val_loss=0.5,
                thresholds=THRESHOLDS[which],
                threshold_source="validation",
                metrics={"validation": validation},
            )
            for which in ("best", "last")
        },
        files=[file_entry(folder, "best.onnx"), file_entry(folder, "last.onnx")],
    )
    manifest.write(folder)
    if int8:
        from training.quantize import add_int8_variants

        images = [image_bytes(100 + i) for i in range(12)]
        truth = np.random.default_rng(seed).integers(0, 2, (len(images), len(LABELS)))
        add_int8_variants(folder, manifest, images, images, truth, tolerance=1.0, say=lambda _: None)


def image_bytes(
    seed: int, *, size: tuple[int, int] = (64, 48), fmt: str = "JPEG", mode: str = "RGB"
) -> bytes:
    """A deterministic picture: a colour gradient whose mean colour depends on `seed`."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, 3)
    ramp = np.linspace(0, 60, w)[None, :, None]
    pixels = np.clip(base[None, None, :] + ramp + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


@dataclass(frozen=True)
class Server:
    url: str
    home: Path
    env: dict[str, str]
    log: Path
    tag: str
    proc: subprocess.Popen | None = None


def save_tiny_model(
    root: Path, env: dict[str, str], name: str = MODEL_NAME, seed: int = 1, *, int8: bool = False
) -> str:
    """Build a tiny model named `name` under `root` and save it into the store of `env`; its tag."""
    build_model(root / f"model-{name}-{seed}", name, seed, int8=int8)
    save = [PYTHON, "-c", SAVE_SCRIPT, str(root / f"model-{name}-{seed}")]
    return subprocess.run(save, env=env, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def serve_tiny_model(root: Path, env: dict[str, str], *, int8: bool = False) -> Iterator[Server]:
    """The tiny model (with int8 variants when `int8`) saved into a BentoML store under `root` (by a
    subprocess, so this process's BentoML singletons never point at it) and served by a real
    `bentoml serve` with `env`."""
    home = root / "bentoml_home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **env}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    tag = save_tiny_model(root, env, int8=int8)
    port = free_port()
    log = root / "server.log"
    proc = start_serve(env, log, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield Server(url=url, home=home, env=env, log=log, tag=tag, proc=proc)
    finally:
        stop(proc)
