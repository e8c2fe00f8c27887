"""service.store: a model folder goes into the BentoML store (tests/conftest.py points it at a temp dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ManifestError, ModelNotFoundError
from service.manifest import Backbone, Manifest, ModelEntry, SplitMetrics, file_entry
from service.store import load_model, save_model


def _folder(tmp_path: Path, val_map: float | None) -> tuple[Path, Manifest]:
    for which in ("best", "last"):
        (tmp_path / f"{which}.onnx").write_bytes(f"not really onnx: {which}".encode())
    metrics = SplitMetrics(
        images=2,
        accuracy=0.5,
        label_accuracy=0.5,
        micro_precision=0.5,
        micro_recall=0.5,
        micro_f1=0.5,
        map=val_map,
        per_label={},
    )
    manifest = Manifest(
        name="store-test",
        labels=["a"],
        backbone=Backbone(id="x", package="y", feature_dim=2),
        models={
            w: ModelEntry(
                file=f"{w}.onnx",
                epoch=1,
                val_loss=0.1,
                thresholds=[0.5],
                threshold_source="oof",
                metrics={"validation": metrics},
            )
            for w in ("best", "last")
        },
        files=[file_entry(tmp_path, f"{w}.onnx") for w in ("best", "last")],
    )
    return tmp_path, manifest


@pytest.mark.parametrize("val_map", [0.75, None])  # None: no label had a validation positive
def test_save_then_load_latest(tmp_path: Path, val_map: float | None) -> None:
    folder, manifest = _folder(tmp_path, val_map)
    stored = save_model(folder, manifest)
    again = load_model("store-test")
    assert again.tag == stored.tag and again.manifest.labels == ["a"]
    assert (again.path / "best.onnx").read_bytes() == b"not really onnx: best"


def test_a_damaged_version_does_not_load(tmp_path: Path) -> None:
    folder, manifest = _folder(tmp_path, 0.5)
    stored = save_model(folder, manifest)
    (stored.path / "last.onnx").write_bytes(b"half-written")
    with pytest.raises(ManifestError, match="sha256"):
        load_model(stored.tag)


def test_unknown_model_says_how_to_make_one() -> None:
    with pytest.raises(ModelNotFoundError, match="manylabel train --name nope"):
        load_model("nope")
