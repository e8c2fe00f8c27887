"""Labels CSVs, read once for everyone: `manylabel train --labels`, the studio's uploads, and the
CSV the studio writes (`GET /datasets/{id}/labels.csv`, a job's labels.csv), which trains as it is:

- lists, no header: `000006.jpg,bus,car,person` (file name, then any number of labels; blank cells
  ignored; a file name alone is an image with none of the labels: a negative). A first row whose
  first cell is a column name (`filename`, `file`, `image`, `path`, ...) and not an image name is a
  header and is dropped.
- one-hot: header `filename,label_a,label_b,...`, then 0/1 cells (blank = 0). Chosen when the
  header's label cells are not all 0/1 and at least half of the later rows fit it with 0/1 cells
  only; then every row must fit, and a stray `2` is an error naming its line.

UTF-8 (an Excel byte-order mark is fine); UTF-16 and binary files are refused with the fix. A cell
that `service.bundles.csv_safe` escaped (`'=x`) reads back as written (`=x`).

A row names an image by its name in the dataset or by any trailing part of it (usually the bare
file name) when that fits exactly one image; names fitting none or several are reported, never
guessed (`match`; training matches against its own image list the same way). Errors are
`LabelsCsvError`, naming the file and line; callers turn them into their own kind (a 400 naming the
`labels` field in the studio, a DataError in training).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from service.bundles import csv_safe, csv_unsafe
from service.errors import ManylabelError
from service.preprocess import is_image_name

HEADER_NAMES = frozenset({"filename", "file_name", "file", "filepath", "image", "image_name", "img", "path"})
HEADER = "filename"  # the header row the studio writes: a lists-format CSV with a header
_BINARY = frozenset({"0", "1", ""})
Row = tuple[int, list[str]]  # (line number, stripped cells)


@dataclass(frozen=True)
class LabelsTable:
    """A labels CSV as read: file name as written -> its labels (rows naming it twice merged)."""

    rows: dict[str, frozenset[str]]
    labels: list[str]  # sorted; one-hot: every header label, even one no row marks
    one_hot: bool


@dataclass(frozen=True)
class Matched:
    """A table's rows matched to image names."""

    found: dict[str, frozenset[str]]  # image name -> labels
    missing: list[str] = field(default_factory=list)  # CSV names no image has
    ambiguous: list[str] = field(default_factory=list)  # CSV names several images share


class LabelsCsvError(ManylabelError):
    """A labels CSV that cannot be used as given; the message names the file, the line and the fix."""


def fail(message: str) -> LabelsCsvError:
    return LabelsCsvError(message)


def read_labels(data: bytes | bytearray, source: str = "labels.csv") -> LabelsTable:
    """Parse a labels CSV in either layout; LabelsCsvError naming the line otherwise."""
    rows = _rows(_decode(bytes(data), source), source)
    if not rows:
        raise fail(f"{source}: the labels file is empty; expected rows like `000006.jpg,bus,car`")
    one_hot = _is_one_hot(rows)
    table, labels = _parse_one_hot(rows, source) if one_hot else _parse_lists(rows, source)
    if not table:
        raise fail(f"{source}: the labels file has a header but no rows")
    return LabelsTable({k: frozenset(v) for k, v in table.items()}, labels, one_hot)


def match(table_rows: dict[str, frozenset[str]], names: Collection[str]) -> Matched:
    """Pair CSV names with image names: the exact name, else the one image it is a trailing part of."""
    by_base: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_base[name.rsplit("/", 1)[-1]].append(name)
    found: dict[str, set[str]] = {}
    missing, ambiguous = [], []
    for key, labels in table_rows.items():
        if key in names:
            hits = [key]
        else:
            hits = [n for n in by_base.get(key.rsplit("/", 1)[-1], []) if n.endswith("/" + key)]
        if len(hits) == 1:
            found.setdefault(hits[0], set()).update(labels)  # two CSV names, one image: merged
        else:
            (ambiguous if hits else missing).append(key)
    return Matched({k: frozenset(v) for k, v in found.items()}, sorted(missing), sorted(ambiguous))


def write_labels(rows: Iterable[tuple[str, Iterable[str]]]) -> str:
    """A lists-format CSV with a `filename` header row; labels sorted, cells `csv_safe`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([HEADER])
    for name, labels in rows:
        writer.writerow([csv_safe(name), *(csv_safe(label) for label in sorted(labels))])
    return out.getvalue()


def _decode(raw: bytes, source: str) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise fail(f"{source}: the labels file is UTF-16; save it as UTF-8 CSV (Excel: 'CSV UTF-8')")
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise fail(f"{source}, line {line}: binary data; this is not a CSV file")
    try:
        return raw.decode("utf-8-sig")  # -sig: Excel writes a byte-order mark
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise fail(
            f"{source}, line {line}: not UTF-8 text; save the CSV as UTF-8 (Excel: 'CSV UTF-8')"
        ) from None


def _rows(text: str, source: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[Row] = []
    try:
        for cells in reader:
            stripped = [csv_unsafe(c.strip()) for c in cells]
            if any(stripped):
                rows.append((reader.line_num, stripped))
    except csv.Error as exc:
        raise fail(f"{source}, line {reader.line_num}: not valid CSV ({exc})") from None
    return rows


def _is_one_hot(rows: list[Row]) -> bool:
    header = _trim(rows[0][1])
    data = rows[1:]
    if len(header) < 2 or not data or all(c in _BINARY for c in header[1:]):
        return False
    fitting = sum(1 for _, cells in data if _fits_one_hot(_trim(cells), len(header)))
    return fitting * 2 >= len(data)


def _fits_one_hot(cells: list[str], width: int) -> bool:
    # A file name alone is a valid lists row too, so it is no evidence of one-hot.
    return 2 <= len(cells) <= width and all(c in _BINARY for c in cells[1:])


def _parse_one_hot(rows: list[Row], source: str) -> tuple[dict[str, set[str]], list[str]]:
    header_line, header = rows[0][0], _trim(rows[0][1])
    names = header[1:]
    if "" in names or len(set(names)) < len(names):
        raise fail(f"{source}, line {header_line}: the one-hot header has blank or repeated label names")
    table: dict[str, set[str]] = {}
    for line, raw in rows[1:]:
        cells = _trim(raw)
        if len(cells) > len(header):
            raise fail(f"{source}, line {line}: {len(cells)} cells, but the header has {len(header)}")
        for label, cell in zip(names, cells[1:], strict=False):
            if cell not in _BINARY:
                raise fail(
                    f"{source}, line {line}: {cell!r} under {label!r} is not 0 or 1 (the file was read "
                    "as one-hot because of its header row)"
                )
        marked = {label for label, cell in zip(names, cells[1:], strict=False) if cell == "1"}
        table.setdefault(_key(cells[0], source, line), set()).update(marked)
    return table, sorted(names)


def _parse_lists(rows: list[Row], source: str) -> tuple[dict[str, set[str]], list[str]]:
    first = rows[0][1][0]
    if first.lower() in HEADER_NAMES and not is_image_name(first):
        rows = rows[1:]
    table: dict[str, set[str]] = {}
    for line, cells in rows:
        table.setdefault(_key(cells[0], source, line), set()).update(c for c in cells[1:] if c)
    return table, sorted(set().union(*table.values()))


def _key(cell: str, source: str, line: int) -> str:
    if not cell:
        raise fail(f"{source}, line {line}: labels but no file name in the first column")
    key = cell.replace("\\", "/")  # a CSV written on Windows
    while key.startswith("./"):
        key = key[2:]
    return key


def _trim(cells: list[str]) -> list[str]:
    """Drop trailing blank cells: spreadsheets pad rows with them."""
    end = len(cells)
    while end and not cells[end - 1]:
        end -= 1
    return cells[:end]
