"""bundles.py alone: the /predict answer in, zip / JSON / CSV bytes out."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest

from service.bundles import FORMATS, UNLABELED, make_bundle, safe_name, safe_names, to_csv, to_zip

LABELS = ["cat", "dog", "a/b"]


def answer(*rows: tuple[str, list[str], list[float]], labels: list[str] = LABELS) -> dict:
    return {
        "model": "m",
        "version": "v1",
        "which": "best",
        "labels": labels,
        "count": len(rows),
        "images": [
            {
                "filename": name,
                "scores": dict(zip(labels, scores, strict=True)),
                "predicted": predicted,
                "above": {label: label in predicted for label in labels},
                "thresholds": dict.fromkeys(labels, 0.5),
            }
            for name, predicted, scores in rows
        ],
    }


TWO = answer(("x.jpg", ["cat", "a/b"], [0.9, 0.1, 0.75]), ("y.png", [], [0.2, 0.3, 0.4]))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("photo.jpg", "photo.jpg"),
        ("../../etc/passwd.jpg", "etc_passwd.jpg"),
        ("/abs/path/img.png", "abs_path_img.png"),
        ("C:\\Users\\me\\pic.jpg", "C__Users_me_pic.jpg"),
        ("cats/1.jpg", "cats_1.jpg"),
        ("..", "image"),
        ("", "image"),
        (".hidden.jpg", "hidden.jpg"),
        ("-rf.jpg", "rf.jpg"),
        ("a\nb\x00c.jpg", "a_b_c.jpg"),
        ("café 1.jpg", "café 1.jpg"),
        ('we"ird<>|name?.jpg', "we_ird_name_.jpg"),
    ],
)
def test_safe_name(given: str, expected: str) -> None:
    assert safe_name(given) == expected


def test_safe_name_keeps_the_suffix_of_long_names() -> None:
    name = safe_name("x" * 300 + ".jpeg")
    assert len(name) == 120 and name.endswith(".jpeg")


def test_safe_names_are_unique_case_insensitively() -> None:
    assert safe_names(["a.jpg", "A.jpg", "a.jpg", "dir/a.jpg", "noext", "noext"]) == [
        "a.jpg",
        "A (2).jpg",
        "a (3).jpg",
        "dir_a.jpg",
        "noext",
        "noext (2)",
    ]


def test_csv_layout() -> None:
    rows = list(csv.reader(io.StringIO(to_csv(TWO).decode())))
    assert rows == [
        ["filename", "label_1", "label_2", "label_3", "score:cat", "score:dog", "score:a/b"],
        ["x.jpg", "cat", "a/b", "", "0.9", "0.1", "0.75"],
        ["y.png", "", "", "", "0.2", "0.3", "0.4"],
    ]


def test_csv_quotes_awkward_names() -> None:
    rows = list(csv.reader(io.StringIO(to_csv(answer(('a,"b".jpg', ["dog"], [0, 1, 0]))).decode())))
    assert rows[1][:2] == ["a_b_.jpg", "dog"]


def test_zip_layout() -> None:
    data = to_zip(TWO, [b"X", b"Y"])
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(archive.namelist()) == sorted(
        ["cat/x.jpg", "a_b/x.jpg", f"{UNLABELED}/y.png", "predictions.json", "predictions.csv"]
    )
    assert archive.read("cat/x.jpg") == b"X" and archive.read("a_b/x.jpg") == b"X"
    assert archive.read(f"{UNLABELED}/y.png") == b"Y"
    listed = json.loads(archive.read("predictions.json"))
    assert [row["file"] for row in listed["images"]] == ["x.jpg", "y.png"]
    assert listed["labels"] == LABELS
    assert archive.read("predictions.csv") == to_csv(TWO)
    assert archive.getinfo("cat/x.jpg").compress_type == zipfile.ZIP_STORED


def test_zip_is_deterministic() -> None:
    assert to_zip(TWO, [b"X", b"Y"]) == to_zip(TWO, [b"X", b"Y"])


def test_zip_keeps_same_named_images_apart() -> None:
    both = answer(("a.jpg", ["dog"], [0, 1, 0]), ("a.jpg", ["dog"], [0, 0.9, 0]))
    archive = zipfile.ZipFile(io.BytesIO(to_zip(both, [b"first", b"second"])))
    assert archive.read("dog/a.jpg") == b"first" and archive.read("dog/a (2).jpg") == b"second"


def test_label_folders_never_clash() -> None:
    labels = ["_unlabeled", "x/y", "x_y"]
    tricky = answer(("x.jpg", labels, [0.9, 0.9, 0.9]), ("y.png", [], [0.1, 0.1, 0.1]), labels=labels)
    names = set(zipfile.ZipFile(io.BytesIO(to_zip(tricky, [b"X", b"Y"]))).namelist())
    assert {"_unlabeled (2)/x.jpg", "x_y/x.jpg", "x_y (2)/x.jpg", "_unlabeled/y.png"} <= names


def test_zip_needs_one_image_per_prediction() -> None:
    with pytest.raises(ValueError, match="1 images for 2 predictions"):
        to_zip(TWO, [b"X"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_make_bundle(fmt: str) -> None:
    bundle = make_bundle(fmt, TWO, [b"X", b"Y"])
    assert bundle.filename == f"predictions.{fmt}"
    if fmt == "json":
        assert json.loads(bundle.data) == TWO and bundle.media_type == "application/json"


def test_make_bundle_unknown_format() -> None:
    with pytest.raises(ValueError, match="xlsx"):
        make_bundle("xlsx", TWO)
