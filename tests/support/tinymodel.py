"""The tiny ONNX model the service and UI tests serve, built with onnx alone (no torch).

It honours the manifest contract: uint8 NHWC "image" (N, size, size, 3) -> Cast -> normalise ->
mean over H, W -> Gemm -> Sigmoid -> "scores" (N, n_labels); `seed` draws the head, so best and
last can differ. `SAVE_SCRIPT` stores a model folder in the BentoML store of the environment it
runs in (a subprocess, so the test process's BentoML singletons never point at a test store).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAVE_SCRIPT = """
import sys
from pathlib import Path
from service.manifest import Manifest
from service.store import save_model
folder = Path(sys.argv[1])
print(save_model(folder, Manifest.read(folder)).tag)
"""


def tiny_onnx(path: Path, seed: int, *, n_labels: int, size: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 4, (3, n_labels)).astype(np.float32)
    bias = rng.normal(0, 0.5, (n_labels,)).astype(np.float32)
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
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", n_labels])],
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


def tiny_backbone(path: Path) -> Path:
    """A stand-in for EfficientNet-Lite's graph, with something to quantize: uint8 NHWC "image" ->
    (x - 127) / 128 -> Conv 1x1 (3 -> 8) -> ReLU -> mean over H, W -> "features" (N, 8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FEATURES_OUTPUT = "features"  # training.backbone.FEATURES_OUTPUT (support stays training-free)
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Sub", ["nchw", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Conv", ["normed", "W", "B"], ["conv"]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("ReduceMean", ["relu"], [FEATURES_OUTPUT], axes=[2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_backbone",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", "h", "w", 3])],
        [helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT, ["batch", 8])],
        initializer=[
            numpy_helper.from_array(np.array(127.0, np.float32), "mean"),
            numpy_helper.from_array(np.array(128.0, np.float32), "std"),
            numpy_helper.from_array(rng.normal(0, 1, (8, 3, 1, 1)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tiny_model(folder: Path, labels: list[str], name: str = "tiny-test"):
    """best.onnx and last.onnx (heads of seeds 1 and 2, 16-px input) in `folder`, and their manifest
    (not written): the smallest model folder a `ModelRuntime` or `Predictor` opens."""
    from service.manifest import Backbone, Manifest, ModelEntry, Preprocessing, file_entry

    for which, seed in (("best", 1), ("last", 2)):
        tiny_onnx(folder / f"{which}.onnx", seed=seed, n_labels=len(labels), size=16)
    entries = {
        which: ModelEntry(
            file=f"{which}.onnx",
            epoch=1,
            val_loss=0.1,
            thresholds=[0.5] * len(labels),
            threshold_source="oof",
        )
        for which in ("best", "last")
    }
    return Manifest(
        name=name,
        labels=labels,
        backbone=Backbone(id="tiny", package="tests", feature_dim=3),
        preprocessing=Preprocessing(image_size=16),
        models=entries,
        files=[file_entry(folder, f"{which}.onnx") for which in ("best", "last")],
    )
