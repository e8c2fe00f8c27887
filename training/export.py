"""Export: backbone graph + trained head -> one fused ONNX graph, checked before anything is written.

The fused graph maps the preprocessed uint8 batch straight to sigmoid scores. The head's feature
standardisation is folded into its first layer, so the graph is backbone -> Gemm(s) -> Sigmoid.
Export verifies itself: `onnx.checker`, then onnxruntime against the head's float64 reference on the
cached features of a real batch (the backbone graph was checked against torch when it was exported).
`head_graph`, `backbone_graph` and `attach` cut a fused graph at `features` and put another backbone
(the int8 one, training/int8_cache.py) under its head, whatever the head's nodes are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.errors import ManylabelError
from service.manifest import Preprocessing
from training.backbone import FEATURES_OUTPUT

if TYPE_CHECKING:
    from training.extractor import FeatureExtractor

PARITY_ATOL = 1e-4


class ExportError(ManylabelError):
    """The exported graph failed its own checks; nothing was written to the model store."""


def fold_standardisation(layers, mean: np.ndarray, std: np.ndarray):
    """((x - mean) / std) @ W + b  ==  x @ (W / std) + (b - (mean / std) @ W)."""
    (w, b), *rest = layers
    w2 = w / std[:, None]
    b2 = b - (mean / std) @ w
    return [(w2.astype(np.float32), b2.astype(np.float32)), *rest]


def fuse(backbone: onnx.ModelProto, layers, *, output_name: str) -> onnx.ModelProto:
    """Append the head (list of (W, b); ReLU between layers) and a Sigmoid to the backbone graph."""
    model = onnx.ModelProto()
    model.CopyFrom(backbone)
    graph = model.graph
    current = FEATURES_OUTPUT
    for i, (w, b) in enumerate(layers):
        graph.initializer.extend(
            [numpy_helper.from_array(w, f"head_w{i}"), numpy_helper.from_array(b, f"head_b{i}")]
        )
        out = f"head_z{i}"
        graph.node.append(helper.make_node("Gemm", [current, f"head_w{i}", f"head_b{i}"], [out]))
        current = out
        if i < len(layers) - 1:
            graph.node.append(helper.make_node("Relu", [current], [f"head_r{i}"]))
            current = f"head_r{i}"
    graph.node.append(helper.make_node("Sigmoid", [current], [output_name]))
    n_labels = layers[-1][0].shape[1]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_labels]))
    onnx.checker.check_model(model, full_check=True)
    return model


def head_reference(features: np.ndarray, layers) -> np.ndarray:
    """The head in float64 on given features: what the fused float32 graph must reproduce."""
    x = np.asarray(features, np.float64)
    for i, (w, b) in enumerate(layers):
        x = x @ w.astype(np.float64) + b.astype(np.float64)
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return 1 / (1 + np.exp(-x))


def torch_reference(extractor: FeatureExtractor, layers, batch: np.ndarray) -> np.ndarray:
    """Backbone in eager torch and head in float64, for checking a graph whose backbone is not trusted."""
    import torch

    with torch.no_grad():
        return head_reference(extractor(torch.from_numpy(batch)).numpy(), layers)


def check_parity(
    model: onnx.ModelProto, reference: np.ndarray, batch: np.ndarray, spec: Preprocessing
) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {spec.input_name: batch})[0]
    if got.shape != reference.shape:
        raise ExportError(f"ONNX output shape {got.shape} != torch {reference.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - reference)))
    if not np.isfinite(diff) or diff > PARITY_ATOL:
        raise ExportError(f"onnxruntime and torch disagree by {diff:.2e} (> {PARITY_ATOL}); model not saved")
    return diff


# --- graph-level composition: another backbone under the same head ------------------------------


def head_graph(fused: onnx.ModelProto) -> onnx.ModelProto:
    """The part of a fused graph downstream of the backbone's features, as a graph of its own
    (input `features` (batch, D) float -> the fused graph's outputs), whatever the head's nodes are."""
    graph = fused.graph
    produced = {FEATURES_OUTPUT}
    nodes = []
    for node in graph.node:  # ONNX graphs are stored in topological order
        if produced.intersection(node.input):
            nodes.append(node)
            produced.update(node.output)
    used = {name for node in nodes for name in node.input}
    initializers = [t for t in graph.initializer if t.name in used]
    features = helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT, ["batch", "dim"])
    head = helper.make_graph(nodes, "head", [features], list(graph.output), initializer=initializers)
    model = helper.make_model(head, opset_imports=list(fused.opset_import))
    model.ir_version = fused.ir_version
    return model


def backbone_graph(fused: onnx.ModelProto) -> onnx.ModelProto:
    """The rest of a fused graph: image -> `features` (what `head_graph` leaves out)."""
    cut = {name for node in head_graph(fused).graph.node for name in node.output}
    model = onnx.ModelProto()
    model.CopyFrom(fused)
    graph = model.graph
    nodes = [n for n in fused.graph.node if not cut.intersection(n.output)]
    used = {name for node in nodes for name in node.input}
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in fused.graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT, ["batch", "dim"]))
    return model


def attach(backbone: onnx.ModelProto, head: onnx.ModelProto) -> onnx.ModelProto:
    """`backbone` (image -> features) followed by `head` (features -> scores): one served graph, the
    composition `fuse` makes, at graph level (the backbone may be an int8 QDQ graph)."""
    clash = {t.name for t in backbone.graph.initializer} & {t.name for t in head.graph.initializer}
    if clash:
        raise ExportError(f"backbone and head share initializer names: {sorted(clash)[:5]}")
    model = onnx.ModelProto()
    model.CopyFrom(backbone)
    graph = model.graph
    graph.initializer.extend(head.graph.initializer)
    graph.node.extend(head.graph.node)
    del graph.output[:]
    graph.output.extend(head.graph.output)
    domains = {o.domain for o in model.opset_import}
    model.opset_import.extend(o for o in head.opset_import if o.domain not in domains)
    onnx.checker.check_model(model)
    return model
