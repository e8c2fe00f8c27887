"""Prediction bundles: the `/predict` answer in, zip / JSON / CSV bytes out. Pure: no I/O, no bentoml.

CSV layout (one row per image, UTF-8, a header row first)::

    filename,label_1,...,label_L,score:<label>,...
    cat_and_car.jpg,car,cat,,,,0.93,0.01,0.88,0.02,0.10

`filename` then the predicted labels, left-aligned and padded with empty cells to L columns (the
training labels CSV layout: a file name, then its labels, blank cells ignored), then one
`score:<label>` column per label in the model's label order. The file names are the bundle names:
sanitised and made unique, the same names as inside the zip.

Zip layout: `<label>/<name>` for every predicted label of an image (so an image with two labels is
there twice), `_unlabeled/<name>` for an image with none, plus `predictions.json` (the answer, each
image with its bundle name under `file`) and `predictions.csv`.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

FORMATS = ("zip", "json", "csv")
UNLABELED = "_unlabeled"
MAX_SAFE_NAME = 120  # characters, suffix included
_UNSAFE = re.compile(r"[^\w.\-+() ]+")
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed, so the same predictions give the same bytes


@dataclass(frozen=True)
class Bundle:
    data: bytes
    media_type: str
    filename: str


def make_bundle(fmt: str, answer: Mapping[str, Any], images: Sequence[bytes] = ()) -> Bundle:
    """`fmt` is one of FORMATS; `images` (the uploaded bytes, aligned with answer["images"]) for zip."""
    if fmt == "json":
        return Bundle(to_json(answer), "application/json", "predictions.json")
    if fmt == "csv":
        return Bundle(to_csv(answer), "text/csv; charset=utf-8", "predictions.csv")
    if fmt == "zip":
        return Bundle(to_zip(answer, images), "application/zip", "predictions.zip")
    raise ValueError(f"format {fmt!r} is not one of {FORMATS}")


def to_json(answer: Mapping[str, Any]) -> bytes:
    return json.dumps(answer, ensure_ascii=False, indent=1).encode("utf-8")


def to_csv(answer: Mapping[str, Any], names: Sequence[str] | None = None) -> bytes:
    labels = list(answer["labels"])
    rows = answer["images"]
    names = names if names is not None else safe_names([row["filename"] for row in rows])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["filename", *(f"label_{i + 1}" for i in range(len(labels))), *(f"score:{lb}" for lb in labels)]
    )
    for name, row in zip(names, rows, strict=True):
        predicted = list(row["predicted"])
        writer.writerow(
            [
                name,
                *predicted,
                *([""] * (len(labels) - len(predicted))),
                *(repr(float(row["scores"][label])) for label in labels),
            ]
        )
    return out.getvalue().encode("utf-8")


def to_zip(answer: Mapping[str, Any], images: Sequence[bytes]) -> bytes:
    rows = answer["images"]
    if len(images) != len(rows):
        raise ValueError(f"{len(images)} images for {len(rows)} predictions")
    names = safe_names([row["filename"] for row in rows])
    folders = _label_folders(answer["labels"])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, row, data in zip(names, rows, images, strict=True):
            for folder in [folders[label] for label in row["predicted"]] or [UNLABELED]:
                # Images are compressed already: storing them is as small and much faster.
                archive.writestr(_info(f"{folder}/{name}", zipfile.ZIP_STORED), data)
        listed = {**answer, "images": [{**row, "file": name} for row, name in zip(rows, names, strict=True)]}
        archive.writestr(_info("predictions.json", zipfile.ZIP_DEFLATED), to_json(listed))
        archive.writestr(_info("predictions.csv", zipfile.ZIP_DEFLATED), to_csv(answer, names))
    return buffer.getvalue()


def _info(name: str, compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    return info


def _label_folders(labels: Sequence[str]) -> dict[str, str]:
    """Label -> folder name: sanitised, unique, never clashing with `_unlabeled` or the listings."""
    taken = {UNLABELED.casefold(), "predictions.json", "predictions.csv"}
    folders = {}
    for label in labels:
        folders[label] = _unique(safe_name(label, fallback="label"), taken)
    return folders


def safe_names(names: Sequence[str]) -> list[str]:
    """Sanitised, unique (case-insensitively) file names, in order: `a.jpg`, `a (2).jpg`, ..."""
    taken: set[str] = set()
    return [_unique(safe_name(name), taken) for name in names]


def safe_name(name: str, *, fallback: str = "image") -> str:
    """One flat, portable file name from anything a client sent: no folders, no `..`, no controls.

    A path inside a zip keeps its folders as `_`-joined parts (`cats/1.jpg` -> `cats_1.jpg`).
    """
    name = unicodedata.normalize("NFC", name.replace("\\", "/"))
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".", "..")]
    flat = "_".join(parts)
    flat = _UNSAFE.sub("_", flat).strip(" .")
    flat = flat.lstrip("-") or fallback
    if len(flat) > MAX_SAFE_NAME:
        stem, dot, suffix = flat.rpartition(".")
        if dot and 0 < len(suffix) <= 10:
            flat = stem[: MAX_SAFE_NAME - len(suffix) - 1] + "." + suffix
        else:
            flat = flat[:MAX_SAFE_NAME]
    return flat


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    while candidate.casefold() in taken:
        n += 1
        candidate = f"{stem} ({n}).{suffix}" if suffix else f"{stem} ({n})"
    taken.add(candidate.casefold())
    return candidate
