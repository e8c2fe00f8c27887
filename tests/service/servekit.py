"""Helpers for the service tests: the tiny model, test images, constants (imported by conftest)."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BENTOML = str(Path(PYTHON).parent / "bentoml")
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


def tiny_onnx(path: Path, seed: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 4, (3, len(LABELS))).astype(np.float32)
    bias = rng.normal(0, 0.5, (len(LABELS),)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("ReduceMean", ["normed"], ["pooled"], axes=[1, 2], keepdims=0),
        helper.make_node("Gemm", ["pooled", "W", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(LABELS)])],
        initializer=[
            numpy_helper.from_array(np.array(127.0, np.float32), "mean"),
            numpy_helper.from_array(np.array(128.0, np.float32), "std"),
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_model(folder: Path) -> None:
    """best.onnx, last.onnx and a valid manifest.json in `folder`."""
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
    tiny_onnx(folder / "best.onnx", seed=1)
    tiny_onnx(folder / "last.onnx", seed=2)
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
        name=MODEL_NAME,
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


SAVE_SCRIPT = """
import sys
from pathlib import Path
from service.manifest import Manifest
from service.store import save_model
folder = Path(sys.argv[1])
print(save_model(folder, Manifest.read(folder)).tag)
"""


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
