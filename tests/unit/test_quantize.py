"""training.quantize: int8 variants made, checked against fp32 and recorded in the manifest, or dropped
with their reason; `manylabel quantize` for a stored model; manifests from before int8 still load."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from support.tinymodel import tiny_backbone, tiny_onnx

from service.cli import main as manylabel
from service.errors import ManifestError
from service.manifest import (
    MANIFEST_FILE,
    Backbone,
    Manifest,
    ModelEntry,
    Preprocessing,
    Variant,
    file_entry,
)
from service.metrics import split_metrics
from service.preprocess import load_image
from service.store import save_model
from training import quantize
from training.quantize import add_int8_variants

LABELS = ["red", "green", "blue"]
SIZE = 32
N = 16


def _image(i: int) -> bytes:
    """A flat colour: the tiny model's mean-RGB head separates them."""
    rng = np.random.default_rng(i)
    pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 10, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


IMAGES = [_image(i) for i in range(N)]
TRUTH = np.array([[i % 2 == 0, i % 3 == 0, i % 5 == 0] for i in range(N)], np.float32)


def _model(folder: Path, *, same: bool = False) -> Manifest:
    """A tiny best/last pair (uint8 NHWC -> mean RGB -> Gemm -> Sigmoid) and its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_onnx(folder / "best.onnx", seed=1, n_labels=len(LABELS), size=SIZE)
    tiny_onnx(folder / "last.onnx", seed=1 if same else 2, n_labels=len(LABELS), size=SIZE)
    manifest = Manifest(
        name="quant-test",
        labels=LABELS,
        backbone=Backbone(id="tiny", package="tests", feature_dim=3),
        preprocessing=Preprocessing(image_size=SIZE),
        models={
            w: ModelEntry(
                file=f"{w}.onnx", epoch=1, val_loss=0.1, thresholds=[0.5] * 3, threshold_source="oof"
            )
            for w in ("best", "last")
        },
        files=[file_entry(folder, f"{w}.onnx") for w in ("best", "last")],
    )
    manifest.write(folder)
    return manifest


def _scores(path: Path, images: list[bytes]) -> np.ndarray:
    spec = Preprocessing(image_size=SIZE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": np.stack([load_image(i, spec) for i in images])})[0]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest, list[str]]:
    folder = tmp_path_factory.mktemp("int8")
    lines: list[str] = []
    manifest = add_int8_variants(
        folder, _model(folder), IMAGES, IMAGES, TRUTH, say=lines.append, tolerance=1.0
    )
    return folder, manifest, lines


# --- the round trip -------------------------------------------------------------------------------


@pytest.mark.slow
def test_int8_files_are_written_listed_and_checked(quantized: tuple[Path, Manifest, list[str]]) -> None:
    folder, manifest, lines = quantized
    assert Manifest.read(folder) == manifest  # written, every sha256 right
    listed = {f.path for f in manifest.files}
    for which in ("best", "last"):
        entry = manifest.models[which]
        variant = entry.variants["int8"]
        assert variant.kept and variant.file == f"{which}.int8.onnx" and variant.file in listed
        assert entry.precisions == ["fp32", "int8"] and entry.file_for("int8") == variant.file
        assert variant.calibration_images == N and "QDQ" in variant.method
        fp32, int8 = _scores(folder / entry.file, IMAGES), _scores(folder / variant.file, IMAGES)
        check = variant.validation
        assert check is not None and check.images == N
        assert check.map_fp32 == pytest.approx(split_metrics(TRUTH, fp32, np.full(3, 0.5), LABELS).map)
        assert check.map == pytest.approx(split_metrics(TRUTH, int8, np.full(3, 0.5), LABELS).map)
        assert check.max_score_diff == pytest.approx(float(np.abs(int8 - fp32).max()), abs=1e-6)
        assert 0 < check.max_score_diff < 0.1  # really quantized, and close
    # QDQ graph: QuantizeLinear / DequantizeLinear nodes, per-channel int8 weights
    import onnx

    ops = {n.op_type for n in onnx.load(str(folder / "best.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(
        line.startswith("int8 best: validation mAP") and "kept (best.int8.onnx)" in line for line in lines
    )


@pytest.mark.slow
def test_over_the_tolerance_int8_is_dropped_and_fp32_kept(tmp_path: Path) -> None:
    lines: list[str] = []
    manifest = add_int8_variants(
        tmp_path, _model(tmp_path), IMAGES, IMAGES, TRUTH, tolerance=-1, say=lines.append
    )
    for which in ("best", "last"):
        variant = manifest.models[which].variants["int8"]
        assert not variant.kept and variant.file is None
        assert "more than the tolerance -1" in variant.reason
        assert variant.validation is not None and variant.validation.images == N  # the numbers stay
        assert manifest.models[which].precisions == ["fp32"]
        assert not (tmp_path / f"{which}.int8.onnx").exists()
    assert {f.path for f in manifest.files} == {"best.onnx", "last.onnx"}
    assert Manifest.read(tmp_path) == manifest
    assert any("NOT kept, best serves fp32 only" in line for line in lines)


@pytest.mark.slow
def test_unreadable_images_are_left_out_with_their_rows(tmp_path: Path) -> None:
    validation = [*IMAGES[:4], b"not an image", *IMAGES[4:8]]
    truth = np.concatenate([TRUTH[:4], np.ones((1, 3), np.float32), TRUTH[4:8]])
    manifest = add_int8_variants(tmp_path, _model(tmp_path), IMAGES, validation, truth, tolerance=1.0)
    check = manifest.models["best"].variants["int8"].validation
    assert check is not None and check.images == 8
    fp32 = _scores(tmp_path / "best.onnx", IMAGES[:8])
    assert check.map_fp32 == pytest.approx(split_metrics(TRUTH[:8], fp32, np.full(3, 0.5), LABELS).map)


def test_identical_best_and_last_are_quantized_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake(source: Path, target: Path, calibration: np.ndarray, *, input_name: str) -> None:
        calls.append(source)
        shutil.copyfile(source, target)  # an "int8" graph equal to fp32: checks pass, nothing is slow

    monkeypatch.setattr(quantize, "quantize_graph", fake)
    manifest = add_int8_variants(tmp_path, _model(tmp_path, same=True), IMAGES, IMAGES, TRUTH)
    assert len(calls) == 1
    assert all(manifest.models[w].variants["int8"].kept for w in ("best", "last"))
    assert (tmp_path / "last.int8.onnx").read_bytes() == (tmp_path / "best.int8.onnx").read_bytes()
    assert manifest.models["best"].variants["int8"].validation.max_score_diff == 0.0


def test_a_graph_that_cannot_be_quantized_serves_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(quantize, "quantize_graph", broken)
    manifest = add_int8_variants(tmp_path, _model(tmp_path), IMAGES, IMAGES, TRUTH)
    variant = manifest.models["best"].variants["int8"]
    assert not variant.kept and variant.reason == "quantization failed: RuntimeError: unsupported op"
    assert variant.validation is None and Manifest.read(tmp_path) == manifest


def test_truth_must_match_the_validation_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"y_validation has shape \(16, 3\); expected \(15, 3\)"):
        add_int8_variants(tmp_path, _model(tmp_path), IMAGES, IMAGES[:15], TRUTH)


@pytest.mark.slow
def test_a_fused_graph_gets_an_int8_backbone_and_keeps_its_fp32_head(tmp_path: Path) -> None:
    """What `manylabel quantize` does to a model `fit()` exported: only the backbone is quantized."""
    import onnx
    from onnx import numpy_helper

    from training.export import fuse
    from training.int8_cache import quantize_fused

    rng = np.random.default_rng(0)
    layers = [(rng.normal(0, 0.5, (8, 6)).astype(np.float32), np.zeros(6, np.float32))]
    layers.append((rng.normal(0, 0.5, (6, 3)).astype(np.float32), np.zeros(3, np.float32)))
    backbone = onnx.load(str(tiny_backbone(tmp_path / "backbone.onnx")))
    onnx.save(fuse(backbone, layers, output_name="scores"), str(tmp_path / "best.onnx"))
    images = np.stack([load_image(i, Preprocessing(image_size=SIZE)) for i in IMAGES])
    quantize_fused(tmp_path / "best.onnx", tmp_path / "best.int8.onnx", images, input_name="image")
    graph = onnx.load(str(tmp_path / "best.int8.onnx")).graph
    head = [n for n in graph.node if n.op_type in ("Gemm", "Relu", "Sigmoid") and "head" in n.output[0]]
    assert [n.op_type for n in head] == ["Gemm", "Relu", "Gemm"]
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert weights["head_w0"].dtype == np.float32  # not quantized
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # the backbone is
    fp32, int8 = _scores(tmp_path / "best.onnx", IMAGES), _scores(tmp_path / "best.int8.onnx", IMAGES)
    assert 0 < np.abs(fp32 - int8).max() < 0.05


def test_best_and_last_share_one_quantized_backbone(tmp_path: Path, monkeypatch) -> None:
    """Two fused graphs with one backbone and different heads: the backbone is quantized once."""
    import onnx

    from training.export import fuse
    from training.int8_cache import quantize_fused

    backbone = onnx.load(str(tiny_backbone(tmp_path / "backbone.onnx")))
    for seed, which in enumerate(("best", "last")):
        w = np.random.default_rng(seed).normal(0, 0.5, (8, 3)).astype(np.float32)
        onnx.save(
            fuse(backbone, [(w, np.zeros(3, np.float32))], output_name="scores"),
            str(tmp_path / f"{which}.onnx"),
        )
    calls = []
    real = quantize.quantize_graph
    monkeypatch.setattr(quantize, "quantize_graph", lambda *a, **k: calls.append(a) or real(*a, **k))
    images = np.stack([load_image(i, Preprocessing(image_size=SIZE)) for i in IMAGES])
    shared: dict = {}
    for which in ("best", "last"):
        quantize_fused(
            tmp_path / f"{which}.onnx",
            tmp_path / f"{which}.int8.onnx",
            images,
            input_name="image",
            quantized=shared,
        )
    assert len(calls) == 1 and len(shared) == 1
    best, last = _scores(tmp_path / "best.int8.onnx", IMAGES), _scores(tmp_path / "last.int8.onnx", IMAGES)
    assert np.abs(best - last).max() > 0.01  # each kept its own head
    for which, scores in (("best", best), ("last", last)):
        assert np.abs(_scores(tmp_path / f"{which}.onnx", IMAGES) - scores).max() < 0.05


# --- the manifest ---------------------------------------------------------------------------------


def test_a_manifest_from_before_int8_loads_and_serves_fp32(tmp_path: Path) -> None:
    raw = json.loads(_model(tmp_path).model_dump_json())
    for entry in raw["models"].values():
        del entry["variants"]  # as written before variants existed
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(raw))
    manifest = Manifest.read(tmp_path)
    assert manifest.models["best"].variants == {} and manifest.models["best"].precisions == ["fp32"]
    with pytest.raises(KeyError):
        manifest.models["best"].file_for("int8")


def test_a_kept_variant_must_be_listed_and_name_its_file(tmp_path: Path) -> None:
    raw = json.loads(_model(tmp_path).model_dump_json())
    raw["models"]["best"]["variants"] = {"int8": {"file": "best.int8.onnx", "kept": True}}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(
        ManifestError, match=r"models.best.variants.int8.file 'best.int8.onnx' is not in files"
    ):
        Manifest.read(tmp_path)
    with pytest.raises(ValueError, match="a kept variant names its file"):
        Variant(kept=True)
    with pytest.raises(ValueError, match="a kept variant names its file"):
        Variant(kept=False, file="best.int8.onnx")


# --- manylabel quantize ---------------------------------------------------------------------------


def _stored_with_records(folder: Path, images: Path) -> None:
    """The tiny model with a records.npz naming its train / validation images, saved in the store."""
    images.mkdir()
    names = [f"img{i:02d}.png" for i in range(N)]
    for name, data in zip(names, IMAGES, strict=True):
        (images / name).write_bytes(data)
    manifest = _model(folder)
    split = np.array(["train"] * 10 + ["validation"] * 6)
    np.savez(folder / "records.npz", names=np.array(names), split=split, y_true=TRUTH.astype(np.uint8))
    files = [*manifest.files, file_entry(folder, "records.npz")]
    save_model(folder, manifest.model_copy(update={"files": files}))


@pytest.mark.slow
def test_manylabel_quantize_saves_a_new_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _stored_with_records(tmp_path / "model", tmp_path / "images")
    argv = ["quantize", "quant-test", "--images", str(tmp_path / "images"), "--tolerance", "1"]
    assert manylabel(argv) == 0
    out = capsys.readouterr().out
    assert "int8: calibrating on 10 training images, validating on 6 images" in out
    assert "int8 for best, last" in out
    from service.store import load_model

    stored = load_model("quant-test")
    assert stored.manifest.models["best"].precisions == ["fp32", "int8"]
    assert (stored.path / "records.npz").is_file()  # every file of the old version carried over
    assert stored.manifest.models["best"].variants["int8"].validation.images == 6


def test_manylabel_quantize_needs_the_images_it_was_trained_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _stored_with_records(tmp_path / "model", tmp_path / "images")
    other = tmp_path / "other"
    other.mkdir()
    (other / "unrelated.png").write_bytes(IMAGES[0])
    assert manylabel(["quantize", "quant-test", "--images", str(other)]) == 2
    assert "give the folder, .zip or files it was trained on" in capsys.readouterr().err


@pytest.mark.slow
def test_a_model_without_records_is_quantized_against_a_labels_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, images = tmp_path / "model", tmp_path / "images"
    save_model(folder, _model(folder))  # no records.npz
    images.mkdir()
    rows = []
    for i, data in enumerate(IMAGES):
        (images / f"img{i:02d}.png").write_bytes(data)
        rows.append(",".join([f"img{i:02d}.png", *(a for a, y in zip(LABELS, TRUTH[i], strict=True) if y)]))
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    assert manylabel(["quantize", "quant-test", "--images", str(images)]) == 2
    assert "stored without records.npz" in capsys.readouterr().err
    argv = ["quantize", "quant-test", "--images", str(images), "--labels", str(tmp_path / "labels.csv")]
    assert manylabel([*argv, "--tolerance", "1", "--calibration-images", "8"]) == 0
    out = capsys.readouterr().out
    assert "calibrating on 8 training images, validating on 16 images" in out
