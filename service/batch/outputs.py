"""The batch client's final files, rendered from the journal: the service's bundle layouts.

json: the `/predict` answer for every image plus "failed"; csv: `service.bundles.to_csv`'s layout;
zip: `service.bundles.to_zip`'s layout, images read from disk as they are written. Written to a
temp file, fsync'd and renamed, so a final file is whole or absent.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

from service.batch_files import sort_key
from service.batch_journal import Journal
from service.bundles import UNLABELED, _info, _label_folders, safe_names

logger = logging.getLogger(__name__)

Format = Literal["zip", "json", "csv"]
OUTPUT_NAMES = {"json": "predictions.json", "csv": "predictions.csv", "zip": "predictions.zip"}


def answers(journal: Journal) -> Iterator[dict[str, Any]]:
    """Each answered image in walk order, as the service's `/predict` answer lists it."""
    relpaths = sorted(journal.done, key=sort_key)
    for relpath, record in zip(relpaths, journal.read(journal.done[r] for r in relpaths), strict=True):
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


def write_json(journal: Journal, out: io.TextIOBase, *, names: list[str] | None = None) -> None:
    """The `/predict` answer for every image, plus "failed" [{filename, status, reason}], one image a line."""
    head = json.dumps(_head(journal, len(journal.done)), ensure_ascii=False)
    out.write(head[:-1] + ', "images": [')
    for i, image in enumerate(answers(journal)):
        if names is not None:
            image = {**image, "file": names[i]}
        out.write(("\n" if i == 0 else ",\n") + json.dumps(image, ensure_ascii=False))
    failed = [
        {"filename": f, "status": r["status"], "reason": r["reason"]}
        for f, r in sorted(journal.failed.items(), key=lambda kv: sort_key(kv[0]))
    ]
    out.write('\n], "failed": ' + json.dumps(failed, ensure_ascii=False) + "}\n")


def write_csv(journal: Journal, out: io.TextIOBase, *, names: list[str] | None = None) -> None:
    """`service.bundles.to_csv`'s layout; the file names are the relative paths unless `names`."""
    labels = _head(journal, 0)["labels"]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["filename", *(f"label_{i + 1}" for i in range(len(labels))), *(f"score:{lb}" for lb in labels)]
    )
    for i, image in enumerate(answers(journal)):
        predicted = image["predicted"]
        writer.writerow(
            [
                image["filename"] if names is None else names[i],
                *predicted,
                *([""] * (len(labels) - len(predicted))),
                *(repr(float(image["scores"][label])) for label in labels),
            ]
        )


def write_zip(journal: Journal, images_root: Path, out: BinaryIO) -> None:
    """`service.bundles.to_zip`'s layout, streamed: each image is read from disk when it is written."""
    relpaths = sorted(journal.done, key=sort_key)
    names = safe_names(relpaths)
    folders = _label_folders(_head(journal, 0)["labels"])
    root = images_root if images_root.is_dir() else images_root.parent
    with zipfile.ZipFile(out, "w") as archive:
        for name, image in zip(names, answers(journal), strict=True):
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
                write(journal, text, names=names)
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
