"""service.custom_thresholds: the documented file, set / set all / reset, validation, atomicity, locking."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from service import custom_thresholds as ct
from service.errors import CustomThresholdsError, RequestError
from service.manifest import Backbone, Manifest, ModelEntry

LABELS = ["cat", "dog", "bird"]


@pytest.fixture
def manifest() -> Manifest:
    entry = {"epoch": 1, "val_loss": 0.2, "threshold_source": "oof"}
    return Manifest(
        name="pets",
        labels=LABELS,
        backbone=Backbone(id="b", package="p", feature_dim=4),
        models={
            "best": ModelEntry(file="best.onnx", thresholds=[0.5, 0.4, 0.6], **entry),
            "last": ModelEntry(file="last.onnx", thresholds=[0.3, 0.2, 0.1], **entry),
        },
    )


def test_no_file_means_the_optimised_thresholds(tmp_path, manifest):
    custom = ct.read(tmp_path, manifest)
    assert custom.is_empty()
    assert ct.effective(manifest, "best", custom) == [0.5, 0.4, 0.6]
    assert ct.effective(manifest, "last") == [0.3, 0.2, 0.1]


def test_set_merges_and_persists_in_the_documented_format(tmp_path, manifest):
    ct.set_values(tmp_path, manifest, {"dog": 0.7})
    ct.set_values(tmp_path, manifest, {"cat": 0.25})
    raw = json.loads((tmp_path / ct.CUSTOM_THRESHOLDS_FILE).read_text())
    assert raw["schema_version"] == 1 and raw["updated_at"]
    assert (raw["best"], raw["last"]) == ({"dog": 0.7, "cat": 0.25}, {})
    again = ct.read(tmp_path, manifest)  # a fresh read, as after a restart
    assert ct.effective(manifest, "best", again) == [0.25, 0.7, 0.6]
    assert ct.effective(manifest, "last", again) == [0.3, 0.2, 0.1]
    assert ct.effective(manifest, "best", again) == ct.ThresholdFile(tmp_path, manifest).effective("best")


def test_set_all_then_per_label_then_reset(tmp_path, manifest):
    ct.set_values(tmp_path, manifest, {"dog": 0.7}, which="both")
    custom = ct.set_all(tmp_path, manifest, 0.45, which="last")
    assert custom.best == {"dog": 0.7} and custom.last == dict.fromkeys(LABELS, 0.45)
    ct.set_values(tmp_path, manifest, {"bird": 0.9}, which="last")
    assert ct.effective(manifest, "last", ct.read(tmp_path, manifest)) == [0.45, 0.45, 0.9]
    custom = ct.reset(tmp_path, manifest, labels=["bird", "dog"])  # default: both models
    assert custom.best == {} and custom.last == {"cat": 0.45}
    custom = ct.reset(tmp_path, manifest, which="last")
    assert custom.is_empty() and not (tmp_path / ct.CUSTOM_THRESHOLDS_FILE).exists()
    assert ct.reset(tmp_path, manifest).is_empty()  # resetting nothing is fine


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda d, m: ct.set_values(d, m, {"horse": 0.5}), "unknown label 'horse'"),
        (lambda d, m: ct.set_values(d, m, {"cat": 1.01}), "outside"),
        (lambda d, m: ct.set_values(d, m, {"cat": -1}), "outside"),
        (lambda d, m: ct.set_values(d, m, {"cat": float("nan")}), "outside"),
        (lambda d, m: ct.set_values(d, m, {"cat": "high"}), "not a number"),
        (lambda d, m: ct.set_values(d, m, {"cat": None}), "not a number"),
        (lambda d, m: ct.set_values(d, m, {}), "at least one"),
        (lambda d, m: ct.set_values(d, m, ["cat"]), "object"),
        (lambda d, m: ct.set_all(d, m, float("inf")), "outside"),
        (lambda d, m: ct.set_all(d, m, True), "not a number"),
        (lambda d, m: ct.set_all(d, m, 0.5, which="middle"), "which"),
        (lambda d, m: ct.reset(d, m, labels=["horse"]), "unknown labels"),
        (lambda d, m: ct.effective(m, "middle"), "middle"),
    ],
)
def test_validation_errors_leave_the_file_alone(tmp_path, manifest, call, match):
    ct.set_values(tmp_path, manifest, {"dog": 0.7})
    before = (tmp_path / ct.CUSTOM_THRESHOLDS_FILE).read_bytes()
    with pytest.raises(RequestError, match=match):  # ThresholdError, or the which check's RequestError
        call(tmp_path, manifest)
    assert (tmp_path / ct.CUSTOM_THRESHOLDS_FILE).read_bytes() == before


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not readable JSON"),
        ('{"schema_version": 1, "best": {"horse": 0.5}, "last": {}}', "unknown label"),
        ('{"schema_version": 1, "best": {"cat": 3}, "last": {}}', "outside"),
        ('{"schema_version": 1, "best": {}, "last": {}, "extra": 1}', "extra"),
        ('{"schema_version": 2, "best": {}, "last": {}}', "schema_version"),
    ],
)
def test_a_damaged_file_is_reported_with_the_way_out(tmp_path, manifest, content, match):
    (tmp_path / ct.CUSTOM_THRESHOLDS_FILE).write_text(content)
    with pytest.raises(ct.CustomThresholdsError, match=match) as err:
        ct.read(tmp_path, manifest)
    assert "--reset" in str(err.value)
    assert ct.reset(tmp_path, manifest).is_empty()  # the way out works on a damaged file
    assert ct.read(tmp_path, manifest).is_empty()


def test_write_is_atomic(tmp_path, manifest, monkeypatch):
    ct.set_values(tmp_path, manifest, {"dog": 0.7})
    path = tmp_path / ct.CUSTOM_THRESHOLDS_FILE
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)  # the rename never happens, as in a crash before it
    with pytest.raises(ct.CustomThresholdsError, match="cannot write"):
        ct.set_values(tmp_path, manifest, {"cat": 0.1})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [ct.CUSTOM_THRESHOLDS_FILE]  # no temp file left


def test_concurrent_updates_are_not_lost(tmp_path, manifest):
    def worker(label: str) -> None:
        for i in range(15):
            ct.set_values(tmp_path, manifest, {label: i / 100})

    threads = [threading.Thread(target=worker, args=(label,)) for label in LABELS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ct.read(tmp_path, manifest).best == dict.fromkeys(LABELS, 0.14)


def test_threshold_file_sees_changes_made_elsewhere(tmp_path: Path, manifest):
    watched = ct.ThresholdFile(tmp_path, manifest)
    assert watched.effective("best") == [0.5, 0.4, 0.6]
    ct.set_all(tmp_path, manifest, 0.8)  # another process (the CLI, another worker)
    assert watched.effective("best") == [0.8, 0.8, 0.8]
    watched.reset()
    assert watched.effective("best") == [0.5, 0.4, 0.6]


def test_thresholds_pinned_by_the_deployment_win_and_refuse_writes(tmp_path, manifest):
    ct.set_values(tmp_path, manifest, {"dog": 0.7})  # a file left in the store is ignored when pinned
    pinned = ct.ThresholdFile.pinned_to(tmp_path, manifest, '{"best": {"cat": 0.25}}')
    assert pinned.effective("best") == [0.25, *ct.effective(manifest, "best")[1:]]
    assert pinned.describe()["pinned"] is True
    writes = (lambda: pinned.set_values({"cat": 0.3}), lambda: pinned.set_all(0.3), lambda: pinned.reset())
    for write in writes:
        with pytest.raises(CustomThresholdsError, match="MANYLABEL_THRESHOLDS") as err:
            write()
        assert err.value.status == 409
    assert ct.read(tmp_path, manifest).values("best") == {"dog": 0.7}  # untouched


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not JSON"),
        ('{"best": {"horse": 0.5}}', "unknown label"),
        ('{"best": {"cat": 2}}', "outside"),
    ],
)
def test_a_bad_pinned_value_fails_at_start_up(tmp_path, manifest, text, match):
    with pytest.raises(CustomThresholdsError, match=match) as err:
        ct.ThresholdFile.pinned_to(tmp_path, manifest, text)
    assert err.value.status == 500 and "MANYLABEL_THRESHOLDS" in str(err.value)
