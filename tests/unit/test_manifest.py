"""service.manifest: round trip, every validation rule through `Manifest.read`, file verification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.errors import ManifestError
from service.files import atomic_write_bytes
from service.manifest import (
    MANIFEST_FILE,
    Backbone,
    FileEntry,
    Manifest,
    ModelEntry,
    file_entry,
)

LABELS = ["cat", "dog", "bird"]


def _make_manifest(directory: Path) -> Manifest:
    """A valid manifest whose best.onnx / last.onnx exist in `directory` and are listed with hashes."""
    (directory / "best.onnx").write_bytes(b"best model bytes")
    (directory / "last.onnx").write_bytes(b"last model bytes")
    entry = {"val_loss": 0.3, "threshold_source": "oof"}
    return Manifest(
        name="pets-v1",
        labels=LABELS,
        label_counts={"train": {"cat": 5, "dog": 4, "bird": 3}},
        backbone=Backbone(id="efficientnet_lite0", package="timm", feature_dim=1280),
        models={
            "best": ModelEntry(
                file="best.onnx",
                epoch=7,
                thresholds=[0.5, 0.25, 0.75],
                profiles={"high_precision": [0.9, 0.8, 0.95]},
                **entry,
            ),
            "last": ModelEntry(file="last.onnx", epoch=9, thresholds=[0.4, 0.3, 0.6], **entry),
        },
        files=[file_entry(directory, "best.onnx"), file_entry(directory, "last.onnx")],
        training={"lr": 1e-4, "head": "mlp"},
    )


def _raw(directory: Path) -> dict[str, Any]:
    return json.loads(_make_manifest(directory).model_dump_json())


def _read_raw(directory: Path, raw: dict[str, Any]) -> Manifest:
    (directory / MANIFEST_FILE).write_text(json.dumps(raw), encoding="utf-8")
    return Manifest.read(directory)


# --- round trip ----------------------------------------------------------------------------------


def test_write_then_read_returns_an_equal_manifest(tmp_path: Path) -> None:
    manifest = _make_manifest(tmp_path)
    path = manifest.write(tmp_path)
    assert path == tmp_path / MANIFEST_FILE
    assert Manifest.read(tmp_path) == manifest


def test_thresholds_maps_each_label_to_its_value(tmp_path: Path) -> None:
    manifest = _make_manifest(tmp_path)
    assert manifest.thresholds("best") == {"cat": 0.5, "dog": 0.25, "bird": 0.75}
    assert manifest.thresholds("last") == {"cat": 0.4, "dog": 0.3, "bird": 0.6}


# --- validation: each rule raises ManifestError naming the field ---------------------------------


def test_rejects_an_unknown_schema_version(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["schema_version"] = 2
    with pytest.raises(ManifestError, match="schema_version 2"):
        _read_raw(tmp_path, raw)


def test_rejects_thresholds_of_the_wrong_length(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["models"]["best"]["thresholds"] = [0.5, 0.5]
    with pytest.raises(ManifestError, match=r"models\.best\.thresholds has 2 values for 3 labels"):
        _read_raw(tmp_path, raw)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_rejects_a_threshold_outside_0_1_or_nan(tmp_path: Path, bad: float) -> None:
    raw = _raw(tmp_path)
    raw["models"]["last"]["thresholds"] = [0.5, bad, 0.5]
    with pytest.raises(ManifestError, match=r"models\.last\.thresholds has values outside \[0, 1\]"):
        _read_raw(tmp_path, raw)


def test_rejects_a_profile_of_the_wrong_length(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["models"]["best"]["profiles"]["high_recall"] = [0.1]
    with pytest.raises(ManifestError, match=r"models\.best\.high_recall has 1 values for 3 labels"):
        _read_raw(tmp_path, raw)


@pytest.mark.parametrize("labels", [["cat", "cat", "bird"], ["cat", " ", "bird"], ["cat", "", "bird"]])
def test_rejects_duplicate_or_blank_labels(tmp_path: Path, labels: list[str]) -> None:
    raw = _raw(tmp_path)
    raw["labels"] = labels
    with pytest.raises(ManifestError, match="labels must be unique"):
        _read_raw(tmp_path, raw)


@pytest.mark.parametrize("which", ["best", "last"])
def test_rejects_a_missing_best_or_last_model(tmp_path: Path, which: str) -> None:
    raw = _raw(tmp_path)
    del raw["models"][which]
    with pytest.raises(ManifestError, match=f"models must include.*{which}"):
        _read_raw(tmp_path, raw)


@pytest.mark.parametrize("name", ["Pets", "-pets", "pets model", "pets/v1", ""])
def test_rejects_a_name_outside_the_pattern(tmp_path: Path, name: str) -> None:
    raw = _raw(tmp_path)
    raw["name"] = name
    with pytest.raises(ManifestError, match=r": name: "):
        _read_raw(tmp_path, raw)


def test_rejects_an_unknown_extra_field(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["models"]["best"]["colour"] = "blue"
    with pytest.raises(ManifestError, match=r"models\.best\.colour: Extra inputs are not permitted"):
        _read_raw(tmp_path, raw)


def test_rejects_a_file_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ManifestError, match="is not readable JSON"):
        Manifest.read(tmp_path)


def test_rejects_a_folder_without_manifest_json(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=f"{MANIFEST_FILE} does not exist"):
        Manifest.read(tmp_path)


# --- verify_files ----------------------------------------------------------------------------------


def test_read_rejects_a_listed_file_that_is_missing(tmp_path: Path) -> None:
    _make_manifest(tmp_path).write(tmp_path)
    (tmp_path / "last.onnx").unlink()
    with pytest.raises(ManifestError, match=r"last\.onnx is listed in the manifest but missing"):
        Manifest.read(tmp_path)


def test_read_rejects_a_modified_file(tmp_path: Path) -> None:
    _make_manifest(tmp_path).write(tmp_path)
    (tmp_path / "best.onnx").write_bytes(b"best model bytes, tampered")
    with pytest.raises(ManifestError, match=r"best\.onnx has sha256 .* modified"):
        Manifest.read(tmp_path)


def test_read_without_verify_accepts_a_modified_file(tmp_path: Path) -> None:
    manifest = _make_manifest(tmp_path)
    manifest.write(tmp_path)
    (tmp_path / "best.onnx").write_bytes(b"tampered")
    assert Manifest.read(tmp_path, verify=False) == manifest


def test_verify_files_rejects_a_model_file_not_listed_in_files(tmp_path: Path) -> None:
    manifest = _make_manifest(tmp_path)
    unlisted = manifest.model_copy(update={"files": [f for f in manifest.files if f.path != "last.onnx"]})
    with pytest.raises(ManifestError, match=r"models\.last\.file 'last\.onnx' is not in files"):
        unlisted.verify_files(tmp_path)


def test_verify_files_passes_on_untouched_files(tmp_path: Path) -> None:
    _make_manifest(tmp_path).verify_files(tmp_path)  # raises on failure


# --- atomic_write_bytes ----------------------------------------------------------------------------


def test_atomic_write_replaces_an_existing_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "data.bin"
    atomic_write_bytes(target, b"first version, longer")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["data.bin"]


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../outside.onnx", "a/../../b.onnx", "C:/x.onnx", "a\\b.onnx", ""]
)
def test_file_paths_must_stay_inside_the_model_folder(path: str) -> None:
    with pytest.raises(ValidationError, match="path"):
        FileEntry(path=path, sha256="0" * 64, size=1)


def test_a_manifest_naming_a_file_outside_its_folder_is_refused_on_read(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["files"].append({"path": "../../etc/passwd", "sha256": "0" * 64, "size": 1})
    with pytest.raises(ManifestError, match="files.2.path"):
        _read_raw(tmp_path, raw)
