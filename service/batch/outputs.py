"""The batch client's final files, rendered from the journal: the service's bundle layouts.

json: the `/predict` answer for every image plus "failed"; csv: `service.bundles.to_csv`'s layout;
zip: `service.bundles.to_zip`'s layout, images read from disk as they are written. Written to a
temp file, fsync'd and renamed, so a final file is whole or absent.

Memory: the done records are streamed from the journal and put in walk order by an external merge
sort (runs of `SORT_RUN` (file, offset) pairs spilled to temp files), so a json or csv file
costs the same memory for any number of images. A zip also remembers each member's name (for
unique names, and zipfile's central directory).
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import io
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

from service.batch.files import sort_key
from service.batch.journal import Journal
from service.bundles import UNLABELED, _info, _label_folders, _unique, csv_safe, safe_name

logger = logging.getLogger(__name__)

Format = Literal["zip", "json", "csv"]
OUTPUT_NAMES = {"json": "predictions.json", "csv": "predictions.csv", "zip": "predictions.zip"}
SORT_RUN = 1 << 15  # (file, offset) pairs sorted in memory at a time


def walk_order(journal: Journal) -> Iterator[tuple[str, int]]:
    """(file, offset of its done record) for each answered file, in walk order."""
    with contextlib.ExitStack() as stack:
        runs: list[Iterator[tuple[str, int]]] = []
        run: list[tuple[str, int]] = []
        for offset, record in journal.done_records():
            run.append((record["file"], offset))
            if len(run) == SORT_RUN:
                runs.append(_spill(sorted(run, key=_walk_key), stack))
                run = []
        run.sort(key=_walk_key)
        yield from heapq.merge(*runs, run, key=_walk_key)


def _walk_key(entry: tuple[str, int]) -> str:
    return sort_key(entry[0])


def _spill(run: list[tuple[str, int]], stack: contextlib.ExitStack) -> Iterator[tuple[str, int]]:
    """Write a sorted run to a temp file (the Job mounts an emptyDir on /tmp); read it back lazily."""
    f = stack.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8"))  # noqa: SIM115
    for entry in run:
        f.write(json.dumps(entry) + "\n")
    f.seek(0)
    return (tuple(json.loads(line)) for line in f)  # type: ignore[misc]


def answers(journal: Journal) -> Iterator[dict[str, Any]]:
    """Each answered image in walk order, as the service's `/predict` answer lists it."""
    for relpath, record in journal.read(walk_order(journal)):
        model = journal.models[record["version"]]
        predicted = record["predicted"]
        yield {
            "filename": relpath,
            "scores": record["scores"],
            "predicted": predicted,
            "above": {label: label in predicted for label in model["labels"]},
            "thresholds": record.get("thresholds", model["thresholds"]),
        }


def _head(journal: Journal, count: int) -> dict[str, Any]:
    """The answer's model fields; the latest model record wins when several versions answered."""
    model = list(journal.models.values())[-1] if journal.models else {}
    head = {
        "model": model.get("name"),
        "version": model.get("version"),
        "which": model.get("which"),
        "labels": model.get("labels", []),
        "count": count,
    }
    if len(journal.models) > 1:
        head["versions"] = list(journal.models)
    return head


def write_json(journal: Journal, out: io.TextIOBase, *, bundled: bool = False) -> None:
    """The `/predict` answer for every image, plus "failed" [{filename, status, reason}], one image a line.

    `bundled`: each image also lists its name inside the zip under "file".
    """
    head = json.dumps(_head(journal, len(journal.done)), ensure_ascii=False)
    out.write(head[:-1] + ', "images": [')
    taken: set[str] = set()
    for i, image in enumerate(answers(journal)):
        if bundled:
            image = {**image, "file": _unique(safe_name(image["filename"]), taken)}
        out.write(("\n" if i == 0 else ",\n") + json.dumps(image, ensure_ascii=False))
    failed = [
        {"filename": f, "status": r.status, "reason": r.reason}
        for f, r in sorted(journal.failed.items(), key=lambda kv: sort_key(kv[0]))
    ]
    out.write('\n], "failed": ' + json.dumps(failed, ensure_ascii=False) + "}\n")


def write_csv(journal: Journal, out: io.TextIOBase, *, bundled: bool = False) -> None:
    """`service.bundles.to_csv`'s layout; the file names are the relative paths, or the zip's names
    when `bundled`. Cells a spreadsheet would run as a formula are neutralised (`csv_safe`)."""
    labels = _head(journal, 0)["labels"]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["filename", *(f"label_{i + 1}" for i in range(len(labels))), *(f"score:{lb}" for lb in labels)]
    )
    taken: set[str] = set()
    for image in answers(journal):
        predicted = image["predicted"]
        name = _unique(safe_name(image["filename"]), taken) if bundled else image["filename"]
        writer.writerow(
            [
                csv_safe(name),
                *(csv_safe(label) for label in predicted),
                *([""] * (len(labels) - len(predicted))),
                *(repr(float(image["scores"][label])) for label in labels),
            ]
        )


def write_zip(journal: Journal, images_root: Path, out: BinaryIO) -> None:
    """`service.bundles.to_zip`'s layout, streamed: each image is read from disk when it is written."""
    folders = _label_folders(_head(journal, 0)["labels"])
    root = images_root if images_root.is_dir() else images_root.parent
    taken: set[str] = set()
    with zipfile.ZipFile(out, "w") as archive:
        for image in answers(journal):
            name = _unique(safe_name(image["filename"]), taken)
            try:
                data = (root / image["filename"]).read_bytes()
            except OSError as exc:
                logger.warning("%s: left out of the zip: %s", image["filename"], exc)
                continue
            for folder in [folders[label] for label in image["predicted"]] or [UNLABELED]:
                archive.writestr(_info(f"{folder}/{name}", zipfile.ZIP_STORED), data)
        for member, write in (("predictions.json", write_json), ("predictions.csv", write_csv)):
            with archive.open(_info(member, zipfile.ZIP_DEFLATED), "w") as raw:
                text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
                write(journal, text, bundled=True)
                text.flush()
                text.detach()


def write_output(journal: Journal, fmt: Format, images_root: Path, path: Path) -> None:
    """Render the final file from the journal into a temp file, fsync, rename over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as raw:
        if fmt == "zip":
            write_zip(journal, images_root, raw)
        else:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            (write_json if fmt == "json" else write_csv)(journal, text)
            text.flush()
            text.detach()
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
