"""The rows one upload writes, inside its transaction: the dataset, its images, its labels.

Called by `datasets.DatasetStore` with the transaction open; everything here commits together or
not at all. Label changes are written as the labels now (`image_labels`) and as history
(`label_events`, with the dataset version that made them).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from service.errors import RequestError
from service.labels_csv import LabelsTable, match
from service.studio.db import Transaction

MAX_PROBLEMS = 200  # problems listed in one answer; the rest are counted


@dataclass(frozen=True)
class Stored:
    """An uploaded image whose bytes are on disk under their hash."""

    name: str
    sha256: str
    size: int


@dataclass
class Report:
    """What an upload did not use, and why: `{"file", "error"}` rows for the answer."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: set[str] = field(default_factory=set)  # names refused here: their CSV rows say nothing new

    def add(self, file: str | None, error: str) -> None:
        self.rows.append({"file": file, "error": error})

    def listed(self) -> list[dict[str, Any]]:
        if len(self.rows) <= MAX_PROBLEMS:
            return self.rows
        more = len(self.rows) - MAX_PROBLEMS
        return [*self.rows[:MAX_PROBLEMS], {"file": None, "error": f"... and {more} more problems"}]


def unknown_dataset(ref: object, *, field: str = "id") -> RequestError:
    return RequestError(
        f"{field}: no dataset {str(ref)[:100]!r}; GET /datasets lists them", field=field, status=404
    )


def insert_dataset(tx: Transaction, name: str) -> int:
    try:
        cursor = tx.execute("INSERT INTO datasets (name, created) VALUES (?, ?)", (name, time.time()))
    except sqlite3.IntegrityError:
        raise RequestError(
            f"name: a dataset named {name!r} exists; add images to it (POST /datasets/{{id}}/images) or "
            "choose another name",
            field="name",
            status=409,
        ) from None
    return int(cursor.lastrowid or 0)


def current_version(tx: Transaction, dataset: int) -> int:
    row = tx.execute("SELECT version FROM datasets WHERE id = ?", (dataset,)).fetchone()
    if row is None:
        raise unknown_dataset(dataset)
    return int(row[0])


def insert_images(tx: Transaction, dataset: int, version: int, stored: list[Stored], report: Report) -> bool:
    have = dict(tx.execute("SELECT name, sha256 FROM images WHERE dataset = ?", (dataset,)).fetchall())
    new = []
    for item in stored:
        if item.name not in have:
            new.append(item)
        elif have[item.name] != item.sha256:
            report.add(item.name, "the dataset has another image of this name; kept it, rename the new one")
            report.skipped.add(item.name)
    tx.executemany(
        "INSERT OR IGNORE INTO blobs (sha256, bytes) VALUES (?, ?)", [(s.sha256, s.size) for s in new]
    )
    tx.executemany(
        "INSERT INTO images (dataset, name, sha256, added) VALUES (?, ?, ?, ?)",
        [(dataset, s.name, s.sha256, version) for s in new],
    )
    return bool(new)


def apply_labels(
    tx: Transaction, dataset: int, version: int, table: LabelsTable, source: str, report: Report
) -> bool:
    """Each image a row names gets exactly that row's labels; a label event records every change."""
    names = {r[0] for r in tx.execute("SELECT name FROM images WHERE dataset = ?", (dataset,))}
    matched = match(table.rows, names)
    for key in matched.missing:
        if key not in report.skipped:
            report.add(key, "the labels CSV names a file that is not in the dataset; its row is not used")
    for key in matched.ambiguous:
        report.add(key, "the labels CSV names a file several images share; write the full name instead")
    insert_label = "INSERT OR IGNORE INTO labels (dataset, label) VALUES (?, ?)"
    new_labels = {*table.labels, *(x for labels in matched.found.values() for x in labels)}
    changed = tx.executemany(insert_label, [(dataset, x) for x in sorted(new_labels)]).rowcount > 0
    now = time.time()
    current: dict[str, set[str]] = {}
    for r in tx.execute("SELECT name, label FROM image_labels WHERE dataset = ?", (dataset,)):
        current.setdefault(r[0], set()).add(r[1])
    labelled = {
        r[0] for r in tx.execute("SELECT name FROM images WHERE dataset = ? AND labelled = 1", (dataset,))
    }
    for name, labels in sorted(matched.found.items()):
        if name in labelled and current.get(name, set()) == labels:
            continue
        tx.execute("DELETE FROM image_labels WHERE dataset = ? AND name = ?", (dataset, name))
        tx.executemany(
            "INSERT INTO image_labels (dataset, name, label) VALUES (?, ?, ?)",
            [(dataset, name, x) for x in labels],
        )
        tx.execute("UPDATE images SET labelled = 1 WHERE dataset = ? AND name = ?", (dataset, name))
        tx.execute(
            "INSERT INTO label_events (dataset, name, version, labels, source, at) VALUES (?, ?, ?, ?, ?, ?)",
            (dataset, name, version, json.dumps(sorted(labels)), source, now),
        )
        changed = True
    return changed
