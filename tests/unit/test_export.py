"""training.export on a tiny fake backbone: standardisation folding, the fused graph, the parity check."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from service.manifest import Preprocessing
from training.backbone import FEATURES_OUTPUT
from training.export import (
    PARITY_ATOL,
    ExportError,
    check_parity,
    fold_standardisation,
    fuse,
    head_reference,
    torch_reference,
)

SPEC = Preprocessing(image_size=16)
Layers = list[tuple[np.ndarray, np.ndarray]]


def _fake_backbone() -> onnx.ModelProto:
    """uint8 NHWC (N, 8, 8, 3) "image" -> Cast -> mean over H, W -> float "features" (N, 3)."""
    nodes = [
        helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["image_f", "axes"], [FEATURES_OUTPUT], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "fake_backbone",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 8, 8, 3])],
        [helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT, ["batch", 3])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def _layers(sizes: list[int], seed: int = 0) -> Layers:
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(scale=0.05, size=(a, b)).astype(np.float32), rng.normal(size=b).astype(np.float32))
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def _apply(layers: Layers, x: np.ndarray) -> np.ndarray:
    """Numpy head: Linear, ReLU between layers, no final activation."""
    x = x.astype(np.float64)
    for i, (w, b) in enumerate(layers):
        x = x @ w.astype(np.float64) + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


def _reference(layers: Layers, batch: np.ndarray) -> np.ndarray:
    features = batch.astype(np.float64).mean(axis=(1, 2))
    return 1 / (1 + np.exp(-_apply(layers, features)))


def _run(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": batch})[0]


# --- fold_standardisation ----------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[3, 4], [3, 5, 2]])
def test_folding_standardisation_equals_standardising_then_applying_the_layers(sizes: list[int]) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(loc=100, scale=30, size=(6, 3))
    mean, std = x.mean(axis=0), x.std(axis=0)
    layers = _layers(sizes)
    folded = fold_standardisation(layers, mean, std)
    np.testing.assert_allclose(_apply(folded, x), _apply(layers, (x - mean) / std), rtol=1e-5, atol=1e-5)
    assert folded[0][0].dtype == folded[0][1].dtype == np.float32
    # Only the first layer changes; the rest are passed through as they are.
    assert all(new is old for new, old in zip(folded[1:], layers[1:], strict=True))


# --- fuse -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[3, 4], [3, 5, 2]], ids=["linear", "mlp"])
def test_fused_graph_passes_the_checker_and_matches_numpy(sizes: list[int]) -> None:
    layers = _layers(sizes)
    model = fuse(_fake_backbone(), layers, output_name="scores")
    onnx.checker.check_model(model, full_check=True)
    batch = _batch(5)
    got = _run(model, batch)
    assert got.shape == (5, sizes[-1])
    np.testing.assert_allclose(got, _reference(layers, batch), atol=1e-5)


def test_fused_graph_with_folded_standardisation_matches_the_standardised_head() -> None:
    batch = _batch(5)
    features = batch.astype(np.float64).mean(axis=(1, 2))
    mean, std = features.mean(axis=0), features.std(axis=0) + 1.0
    layers = _layers([3, 6, 2])
    model = fuse(_fake_backbone(), fold_standardisation(layers, mean, std), output_name="scores")
    expected = 1 / (1 + np.exp(-_apply(layers, (features - mean) / std)))
    np.testing.assert_allclose(_run(model, batch), expected, atol=1e-5)


def test_fused_graph_has_one_output_with_the_given_name_and_a_dynamic_batch() -> None:
    layers = _layers([3, 4])
    model = fuse(_fake_backbone(), layers, output_name="probabilities")
    assert [o.name for o in model.graph.output] == ["probabilities"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    for n in (1, 5):
        batch = _batch(n, seed=n)
        (got,) = session.run(["probabilities"], {"image": batch})
        assert got.shape == (n, 4)
        np.testing.assert_allclose(got, _reference(layers, batch), atol=1e-5)


def test_fuse_leaves_the_backbone_model_untouched() -> None:
    backbone = _fake_backbone()
    before = backbone.SerializeToString()
    fuse(backbone, _layers([3, 4]), output_name="scores")
    assert backbone.SerializeToString() == before


# --- torch_reference and check_parity ---------------------------------------------------------------


def test_torch_reference_matches_the_numpy_reference() -> None:
    layers = _layers([3, 5, 2])
    batch = _batch(4)

    def extractor(images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(1, 2))

    np.testing.assert_allclose(
        torch_reference(extractor, layers, batch), _reference(layers, batch), atol=1e-6
    )


def test_head_reference_on_cached_features_is_what_the_fused_graph_gives_from_pixels() -> None:
    """The warm-run check: no torch backbone, the cached features of the batch are the reference's input."""
    layers = _layers([3, 5, 2])
    batch = _batch(4)
    features = batch.astype(np.float32).mean(axis=(1, 2))  # what the backbone graph computed and cached
    reference = head_reference(features, layers)
    np.testing.assert_allclose(reference, _reference(layers, batch), atol=1e-6)
    assert check_parity(fuse(_fake_backbone(), layers, output_name="scores"), reference, batch, SPEC) < 1e-5
    with pytest.raises(ExportError):  # features of other images: the check fails, nothing is written
        check_parity(fuse(_fake_backbone(), layers, output_name="scores"), reference[::-1], batch, SPEC)


def test_check_parity_passes_within_tolerance() -> None:
    layers = _layers([3, 5, 2])
    batch = _batch(5)
    model = fuse(_fake_backbone(), layers, output_name="scores")
    reference = _reference(layers, batch)
    assert check_parity(model, reference, batch, SPEC) < 1e-5
    assert check_parity(model, reference + 5e-5, batch, SPEC) <= PARITY_ATOL


def test_check_parity_raises_when_the_reference_is_off_by_1e_3() -> None:
    layers = _layers([3, 5, 2])
    batch = _batch(5)
    model = fuse(_fake_backbone(), layers, output_name="scores")
    reference = _reference(layers, batch)
    reference[2, 1] += 1e-3
    with pytest.raises(ExportError, match="disagree by 1.00e-03"):
        check_parity(model, reference, batch, SPEC)


def test_check_parity_raises_on_a_shape_mismatch_or_nan() -> None:
    layers = _layers([3, 4])
    batch = _batch(3)
    model = fuse(_fake_backbone(), layers, output_name="scores")
    with pytest.raises(ExportError, match="shape"):
        check_parity(model, _reference(layers, batch)[:, :2], batch, SPEC)
    nan_reference = _reference(layers, batch)
    nan_reference[0, 0] = np.nan
    with pytest.raises(ExportError, match="disagree"):
        check_parity(model, nan_reference, batch, SPEC)
