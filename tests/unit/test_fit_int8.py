"""int8 through `fit()`: the backbone quantized once and cached, the head kept fp32, the composed
`<which>.int8.onnx` checked and recorded, dropped with its reason past the tolerance, `--int8 off`.

A tiny backbone (1x1 convolution + ReLU + mean pool, 8 features) stands in for EfficientNet-Lite, so
quantizing and featurising take a second; the training images are flat colours labelled by colour.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from PIL import Image
from support.tinymodel import tiny_backbone

from service.manifest import Manifest
from service.preprocess import load_image
from training import fit as fit_module
from training import quantize
from training.backbone import Choice
from training.config import TrainConfig
from training.fit import fit

N = 48
TINY = Choice("efficientnet-lite1", 32)
LABELS = ("red", "green", "blue")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("int8-fit")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        present = [lab for j, lab in enumerate(LABELS) if (i >> j) & 1] or ["red"]
        colour = np.array([200 if lab in present else 30 for lab in LABELS])
        pixels = np.clip(colour + rng.normal(0, 12, (24, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"img{i:02d}.png")
        rows.append(",".join([f"img{i:02d}.png", *present]))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    backbone = tiny_backbone(root / "cache" / "backbones" / "tiny-0123456789abcdef.onnx")
    return images, root / "labels.csv", backbone


@pytest.fixture
def tiny(data: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    images, labels, backbone = data
    monkeypatch.setattr(fit_module, "backbone_onnx", lambda *args, **kwargs: backbone)
    monkeypatch.setattr(fit_module, "choice", lambda name: TINY)  # 32 px: decoding costs nothing
    return images, labels


def _cfg(root: Path, workdir: Path, **kwargs: object) -> TrainConfig:
    return TrainConfig(
        name="int8-fit", minutes=0.2, max_epochs=4, cache_dir=root / "cache", workdir=workdir, **kwargs
    )


def _events(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "progress.jsonl").read_text().splitlines()]


def test_fit_writes_checked_int8_variants_and_reuses_the_quantized_backbone(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = tiny
    monkeypatch.setattr(quantize, "MAP_TOLERANCE", 1.0)  # a tiny model's mAP says nothing
    built: list[Path] = []
    real = quantize.quantize_graph
    monkeypatch.setattr(quantize, "quantize_graph", lambda s, *a, **k: (built.append(s), real(s, *a, **k)))
    lines: list[str] = []
    result = fit(images, labels, _cfg(images.parent, tmp_path / "run1"), say=lines.append)
    assert len(built) == 1  # the backbone only, not the fused graphs
    manifest, stored = result.manifest, result.stored.path
    assert Manifest.read(stored) == manifest
    spec = TINY.preprocessing()
    batch = np.stack([load_image(images / f"img{i:02d}.png", spec) for i in range(6)])
    for which in ("best", "last"):
        entry = manifest.models[which]
        variant = entry.variants["int8"]
        assert variant.kept and variant.file == f"{which}.int8.onnx" and entry.precisions == ["fp32", "int8"]
        assert "head fp32" in variant.method
        assert variant.calibration_images == manifest.training["train_images"]  # all of them: fewer than 128
        check = variant.validation
        assert check is not None and check.images == manifest.training["validation_images"]
        assert check.map_fp32 == pytest.approx(entry.metrics["validation"].map, abs=1e-4)
        ops = {n.op_type for n in onnx.load(str(stored / variant.file)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Gemm", "Sigmoid"} <= ops  # int8 backbone, fp32 head
        run = {p: ort.InferenceSession(str(stored / entry.file_for(p))) for p in ("fp32", "int8")}
        fp32, int8 = (run[p].run(None, {"image": batch})[0] for p in ("fp32", "int8"))
        assert 0 < np.abs(fp32 - int8).max() <= check.max_score_diff + 0.05  # quantized, and close
    assert any(line.startswith("int8: backbone quantized now") for line in lines)
    assert any("kept (best.int8.onnx)" in line for line in lines)
    event = next(e for e in _events(tmp_path / "run1") if e["stage"] == "int8")
    assert event["backbone"] == "built" and event["kept"] == {"best": True, "last": True}
    assert {"int8 backbone", "int8 features", "int8 check", "int8 export"} <= set(result.stages)

    # A retrain with other settings: the same calibration images, so nothing is quantized or featurised.
    lines.clear()
    again = fit(images, labels, _cfg(images.parent, tmp_path / "run2", lr=3e-3), say=lines.append)
    assert len(built) == 1
    event = next(e for e in _events(tmp_path / "run2") if e["stage"] == "int8")
    assert event["backbone"] == "cached" and event["features_computed"] == 0
    assert again.manifest.models["best"].precisions == ["fp32", "int8"]


def test_int8_losing_more_than_the_tolerance_serves_fp32_and_says_why(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = tiny
    monkeypatch.setattr(quantize, "MAP_TOLERANCE", -1.0)
    lines: list[str] = []
    result = fit(images, labels, _cfg(images.parent, tmp_path / "run"), say=lines.append)
    for which in ("best", "last"):
        variant = result.manifest.models[which].variants["int8"]
        assert not variant.kept and "more than the tolerance -1" in variant.reason
        assert variant.validation is not None  # the numbers stay
        assert result.manifest.models[which].precisions == ["fp32"]
        assert not (result.stored.path / f"{which}.int8.onnx").exists()
    assert any("NOT kept, best serves fp32 only" in line for line in lines)


def test_a_composed_graph_that_fails_its_check_is_dropped(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = tiny
    monkeypatch.setattr(quantize, "MAP_TOLERANCE", 1.0)
    from training import export

    real = export.attach

    def wrong_head(backbone: onnx.ModelProto, head: onnx.ModelProto) -> onnx.ModelProto:
        model = real(backbone, head)
        for t in model.graph.initializer:
            if t.name == "head_b1" or t.name == "head_b0":
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1, t.name))
        return model

    monkeypatch.setattr(export, "attach", wrong_head)
    result = fit(images, labels, _cfg(images.parent, tmp_path / "run"), say=lambda _: None)
    variant = result.manifest.models["best"].variants["int8"]
    assert not variant.kept and "composed int8 graph differs" in variant.reason


def test_int8_off_writes_no_variant(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    images, labels = tiny
    result = fit(images, labels, _cfg(images.parent, tmp_path / "run", int8="off"), say=lambda _: None)
    assert all(e.variants == {} and e.precisions == ["fp32"] for e in result.manifest.models.values())
    assert not any(e["stage"] == "int8" for e in _events(tmp_path / "run"))
    assert not any("int8" in stage for stage in result.stages)


def test_a_sample_that_mostly_overlaps_a_cached_one_reuses_its_int8_backbone(
    data: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images added to a data set move a few into the smallest-sha256 sample: no new quantization."""
    from service.manifest import sha256_file
    from training.int8_cache import quantized_backbone

    images, _, tiny = data
    backbone = tmp_path / "backbones" / tiny.name
    backbone.parent.mkdir()
    backbone.write_bytes(tiny.read_bytes())
    files = sorted(images.iterdir())
    pairs = [(p, sha256_file(p)) for p in files]
    built: list[Path] = []
    real = quantize.quantize_graph
    monkeypatch.setattr(quantize, "quantize_graph", lambda s, *a, **k: (built.append(s), real(s, *a, **k)))
    spec = TINY.preprocessing()
    first, how = quantized_backbone(backbone, spec, pairs[:20])
    assert how == "built" and len(built) == 1
    assert quantized_backbone(backbone, spec, pairs[:20]) == (first, "cached")
    assert quantized_backbone(backbone, spec, pairs[1:21]) == (first, "reused")  # 19 of 20 shared
    other, how = quantized_backbone(backbone, spec, pairs[10:30])  # half shared: calibrated anew
    assert how == "built" and other != first and len(built) == 2
