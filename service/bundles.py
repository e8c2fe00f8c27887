"""Prediction bundles: the `/predict` answer in, a zip / JSON / CSV file out. No bentoml, no paths.

CSV layout (one row per image, UTF-8, a header row first)::

    filename,label_1,...,label_L,score:<label>,...
    cat_and_car.jpg,car,cat,,,,0.93,0.01,0.88,0.02,0.10

`filename` then the predicted labels, left-aligned and padded with empty cells to L columns (the
training labels CSV layout: a file name, then its labels, blank cells ignored), then one
`score:<label>` column per label in the model's label order. The file names are the bundle names:
sanitised and made unique, the same names as inside the zip. A file name or label that a spreadsheet
would run as a formula gets a leading `'` (`csv_safe`); the scores are ours and written as they are.

Zip layout: `<label>/<name>` for every predicted label of an image (so an image with two labels is
there twice), `_unlabeled/<name>` for an image with none, plus `predictions.json` (the answer, each
image with its bundle name under `file`) and `predictions.csv`.

Size: zip has no links, so folders per label store an image once per predicted label; with
threshold 0 a bundle is L times the upload. We keep the folders (browsing them is what the zip is
for, and the batch client writes the same layout) and bound them instead: the size is computed from
the predictions before a byte is written, and a bundle over `max_bytes` is refused with a 413
RequestError naming the limit. Writing goes into a file object (`write_bundle`): the caller's
temporary file or `spool_bundle`'s, which holds up to SPOOL_BYTES in memory and the rest on disk, so
the server never holds a bundle in memory; `make_bundle` keeps the old bytes-in-memory API for
small bundles.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

from service.errors import RequestError

FORMATS = ("zip", "json", "csv")
MEDIA_TYPES = {"zip": "application/zip", "json": "application/json", "csv": "text/csv; charset=utf-8"}
UNLABELED = "_unlabeled"
MAX_SAFE_NAME = 120  # characters, suffix included
DEFAULT_MAX_BUNDLE_BYTES = 1 << 30  # a bundle over this is refused (413); the server passes its setting
SPOOL_BYTES = 8 << 20  # spool_bundle keeps this much in memory, the rest in a temporary file
_UNSAFE = re.compile(r"[^\w.\-+() ]+")
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed, so the same predictions give the same bytes
# A spreadsheet runs a cell starting with = + - @ (or tab / CR before them) as a formula (OWASP
# "CSV injection"). The quote itself is escaped too, so stripping one leading quote undoes it exactly.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
# What zipfile writes besides names and data (APPNOTE 4.3): local header 30 + central directory
# entry 46 per member, end record 22; a data descriptor (<= 24) per member on unseekable output;
# zip64 extras (<= 20 + 28) per member and the zip64 end record and locator (76) past 2 GiB.
_ZIP_HEADERS, _ZIP_DESCRIPTOR, _ZIP64_EXTRAS, _ZIP_END, _ZIP64_END = 30 + 46, 24, 20 + 28, 22, 56 + 20

ImageData = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Bundle:
    """A bundle in memory (`make_bundle`)."""

    data: bytes
    media_type: str
    filename: str


@dataclass(frozen=True)
class BundleInfo:
    """What `write_bundle` wrote: `size` bytes, to be served as `media_type` named `filename`."""

    size: int
    media_type: str
    filename: str


@dataclass
class BundleFile:
    """A bundle in a spooled temporary file (`spool_bundle`), rewound. Close it (or use `with`)."""

    file: IO[bytes]
    size: int
    media_type: str
    filename: str

    def chunks(self, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The bundle's bytes in pieces, for a streaming response; closes the file at the end."""
        try:
            while chunk := self.file.read(chunk_bytes):
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> BundleFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_bundle(
    fmt: str,
    answer: Mapping[str, Any],
    images: Sequence[ImageData] = (),
    *,
    max_bytes: int | None = DEFAULT_MAX_BUNDLE_BYTES,
) -> Bundle:
    """The bundle as bytes: one copy in memory (up to `max_bytes`). Servers use `spool_bundle`.

    `fmt` is one of FORMATS; `images` (the uploaded bytes, aligned with answer["images"]) for zip.
    Raises RequestError (413, field "format") over `max_bytes`, ValueError for an unknown format.
    """
    out = io.BytesIO()
    info = write_bundle(fmt, answer, images, out, max_bytes=max_bytes)
    return Bundle(out.getvalue(), info.media_type, info.filename)


def spool_bundle(
    fmt: str,
    answer: Mapping[str, Any],
    images: Sequence[ImageData] = (),
    *,
    max_bytes: int | None = DEFAULT_MAX_BUNDLE_BYTES,
    spool_bytes: int = SPOOL_BYTES,
) -> BundleFile:
    """The bundle in a SpooledTemporaryFile: in memory up to `spool_bytes`, on disk beyond. Rewound.

    The caller closes it, or streams `chunks()`, which closes it when done. Raises as make_bundle.
    """
    spool = tempfile.SpooledTemporaryFile(max_size=spool_bytes)  # noqa: SIM115 - returned open
    try:
        info = write_bundle(fmt, answer, images, spool, max_bytes=max_bytes)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return BundleFile(spool, info.size, info.media_type, info.filename)


def write_bundle(
    fmt: str,
    answer: Mapping[str, Any],
    images: Sequence[ImageData],
    out: IO[bytes],
    *,
    max_bytes: int | None = DEFAULT_MAX_BUNDLE_BYTES,
) -> BundleInfo:
    """Write the bundle into `out` (a binary file with `write` and `tell`), checking its size first.

    Nothing is written when the bundle would be over `max_bytes`: RequestError, status 413.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    start = out.tell()
    if fmt == "zip":
        write_zip(answer, images, out, max_bytes=max_bytes)
    else:
        data = to_json(answer) if fmt == "json" else to_csv(answer)
        _check_size(fmt, len(data), max_bytes)
        out.write(data)
    return BundleInfo(out.tell() - start, MEDIA_TYPES[fmt], f"predictions.{fmt}")


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
                csv_safe(name),
                *(csv_safe(label) for label in predicted),
                *([""] * (len(labels) - len(predicted))),
                *(repr(float(row["scores"][label])) for label in labels),
            ]
        )
    return out.getvalue().encode("utf-8")


def csv_safe(cell: str) -> str:
    """`cell` as a spreadsheet shows it instead of running it: `'` before = + - @ tab CR and '.

    OWASP's CSV-injection defence. Every CSV we write passes file names and labels through here;
    `csv_unsafe` undoes it for a reader that wants the original text back.
    """
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def csv_unsafe(cell: str) -> str:
    """The text `csv_safe` was given, for a reader of our CSVs (e.g. predictions fed back to training):
    the leading `'` removed where csv_safe added it; any other cell as it is."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_START) else cell


def to_zip(answer: Mapping[str, Any], images: Sequence[ImageData], *, max_bytes: int | None = None) -> bytes:
    """The zip bundle as bytes (tests, small bundles); `write_zip` writes it into a file."""
    out = io.BytesIO()
    write_zip(answer, images, out, max_bytes=max_bytes)
    return out.getvalue()


def write_zip(
    answer: Mapping[str, Any], images: Sequence[ImageData], out: IO[bytes], *, max_bytes: int | None = None
) -> None:
    """Write the zip layout into `out`; RequestError (413) before writing when over `max_bytes`."""
    rows = answer["images"]
    if len(images) != len(rows):
        raise ValueError(f"{len(images)} images for {len(rows)} predictions")
    names = safe_names([row["filename"] for row in rows])
    folders = _label_folders(answer["labels"])
    members = [
        (f"{folder}/{name}", data)
        for name, row, data in zip(names, rows, images, strict=True)
        for folder in [folders[label] for label in row["predicted"]] or [UNLABELED]
    ]
    listed = {**answer, "images": [{**row, "file": name} for row, name in zip(rows, names, strict=True)]}
    listings = {"predictions.json": to_json(listed), "predictions.csv": to_csv(answer, names)}
    sizes = [(member, len(data)) for member, data in members]
    sizes += [(member, _deflated_size(text)) for member, text in listings.items()]
    size = _zip_size(sizes, seekable=out.seekable())
    _check_size("zip", size, max_bytes, detail=" (each image once per predicted label)")
    with zipfile.ZipFile(out, "w") as archive:
        for member, data in members:
            # Images are compressed already: storing them is as small and much faster.
            archive.writestr(_info(member, zipfile.ZIP_STORED), data)
        for member, text in listings.items():
            archive.writestr(_info(member, zipfile.ZIP_DEFLATED), text)


def _zip_size(members: Sequence[tuple[str, int]], *, seekable: bool) -> int:
    """Bytes of the zip of `members` (name, bytes stored): exact below ~2 GiB, an upper bound above."""
    zip64_from = int(zipfile.ZIP64_LIMIT / 1.05)  # zipfile turns zip64 on with a 5% margin
    size = 0
    for member, stored in members:
        size += _ZIP_HEADERS + 2 * len(member.encode("utf-8")) + stored
        size += 0 if seekable else _ZIP_DESCRIPTOR
        size += _ZIP64_EXTRAS if size > zip64_from else 0
    return size + _ZIP_END + (_ZIP64_END if size > zip64_from else 0)


def _deflated_size(data: bytes) -> int:
    """len(data) once zipfile has deflated it (its compressor, so the same bytes)."""
    packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    return len(packer.compress(data)) + len(packer.flush())


def _check_size(fmt: str, size: int, max_bytes: int | None, *, detail: str = "") -> None:
    if max_bytes is not None and size > max_bytes:
        raise RequestError(
            f"format: the {fmt} bundle would take {size:,} bytes{detail}, over the limit of "
            f"{max_bytes:,} bytes; ask for format=csv or json, use a higher threshold, or send fewer "
            "images per request",
            field="format",
            status=413,
        )


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
