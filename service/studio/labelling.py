"""Labelling from the page: label changes checked and written, pages of images, history, old versions.

A change is `{"add": [...], "remove": [...]}` or `{"labels": [...]}` (set exactly); the bulk form adds
`"images": [ids]`. Each request is one transaction: the images' labels now (`image_labels`), one
`label_events` row per image whose labels changed (its history, with the request's `source`: `edit`,
`bulk` or `suspect`) and one bump of the dataset's version; a request that changes nothing bumps
nothing. Setting an image's labels marks it labelled (an empty set is a negative).

A label name must read back from the CSV the studio exports as it was written (`label_problem`):
the rules `service.labels_csv.read_labels` applies to a cell, checked by writing the name with
`write_labels` and reading it back (so no blank name and no leading or trailing whitespace, which the
reader strips; the formula guard's `'` round-trips), plus no control characters and at most
`MAX_LABEL_CHARS` characters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from service.errors import RequestError
from service.labels_csv import LabelsCsvError, read_labels, write_labels
from service.studio.changes import current_version
from service.studio.db import Database, Transaction

MAX_LABEL_CHARS = 200
MAX_LABELS = 1_000  # labels named by one change
MAX_IMAGES = 10_000  # images named by one bulk change or one list of decisions
CHANGE_KEYS = ("add", "remove", "labels")
_CHUNK = 500  # ids per IN (...) query


@dataclass(frozen=True)
class Change:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None  # set exactly

    def apply(self, labels: frozenset[str]) -> frozenset[str]:
        if self.labels is not None:
            return frozenset(self.labels)
        return (labels - set(self.remove)) | set(self.add)


@dataclass(frozen=True)
class Current:
    """An image as it is now."""

    id: int
    name: str
    sha256: str
    labelled: bool
    labels: frozenset[str]


# --- checking requests --------------------------------------------------------------------------------


def label_problem(label: str) -> str | None:
    """Why `label` cannot be a label name (see the module docstring), or None."""
    if not label.strip():
        return "a label name cannot be blank"
    if label != label.strip():
        return "a label name cannot start or end with whitespace"
    if len(label) > MAX_LABEL_CHARS:
        return f"a label name has at most {MAX_LABEL_CHARS} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in label):
        return "a label name cannot hold control characters"
    try:
        back = read_labels(write_labels([("x.jpg", [label])]).encode("utf-8")).rows.get("x.jpg")
    except LabelsCsvError:
        back = None
    if back != frozenset({label}):
        return "the labels CSV would not read this name back as written"
    return None


def check_label(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{field}: a label name is a string (got {json.dumps(value)[:100]})", field=field)
    problem = label_problem(value)
    if problem:
        raise RequestError(f"{field}: {value[:100]!r}: {problem}", field=field)
    return value


def _label_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise RequestError(f"{key}: send a list of label names", field=key)
    if len(value) > MAX_LABELS:
        raise RequestError(f"{key}: at most {MAX_LABELS} labels in one change", field=key)
    return tuple(dict.fromkeys(check_label(v, f"{key}[{i}]") for i, v in enumerate(value)))


def parse_change(body: Any, *, bulk: bool = False) -> tuple[Change, dict[int, str]]:
    """A PATCH (or, `bulk`, a POST .../images/labels) body -> the change, and (bulk) image id -> field."""
    if not isinstance(body, dict):
        raise RequestError("body: send a JSON object", field="body")
    allowed = ("images", "add", "remove") if bulk else CHANGE_KEYS
    for key in body:
        if key not in allowed:
            shown = ", ".join(repr(k) for k in allowed)
            raise RequestError(
                f"{str(key)[:100]}: not expected; the body takes {shown}", field=str(key)[:100]
            )
    ids = image_ids(body.get("images"), "images") if bulk else {}
    if "labels" in body and ("add" in body or "remove" in body):
        raise RequestError("labels: give labels (set them), or add and remove, not both", field="labels")
    if "labels" in body:
        return Change(labels=_label_list(body["labels"], "labels")), ids
    add = _label_list(body.get("add", []), "add")
    remove = _label_list(body.get("remove", []), "remove")
    if not add and not remove:
        field = next((k for k in ("add", "remove") if k in body), "body")
        example = '{"add": [...], "remove": [...]}' + ("" if bulk else ' or {"labels": [...]}')
        raise RequestError(f"{field}: nothing to change; send {example}", field=field)
    both = [i for i, x in enumerate(remove) if x in add]
    if both:
        field = f"remove[{both[0]}]"
        raise RequestError(f"{field}: {remove[both[0]]!r} is also in add", field=field)
    return Change(add=add, remove=remove), ids


def image_ids(value: Any, key: str) -> dict[int, str]:
    """A list of image ids -> each id (once, in order) and the field naming its first place."""
    if not isinstance(value, list) or not value:
        raise RequestError(f"{key}: send a non-empty list of image ids", field=key)
    if len(value) > MAX_IMAGES:
        raise RequestError(f"{key}: at most {MAX_IMAGES} images in one request", field=key)
    ids: dict[int, str] = {}
    for i, v in enumerate(value):
        if not isinstance(v, int) or isinstance(v, bool):
            field = f"{key}[{i}]"
            raise RequestError(f"{field}: an image id is an integer (got {json.dumps(v)[:100]})", field=field)
        ids.setdefault(v, f"{key}[{i}]")
    return ids


# --- reading and writing, inside a transaction -----------------------------------------------------------


def known_labels(tx: Transaction, dataset: int) -> set[str]:
    return {r[0] for r in tx.execute("SELECT label FROM labels WHERE dataset = ?", (dataset,))}


def load_current(
    tx: Transaction, dataset: int, ids: Sequence[int], fields: Sequence[str]
) -> dict[int, Current]:
    """The images `ids` of the dataset as they are now; 404 naming the field of the first unknown."""
    rows = {}
    for start in range(0, len(ids), _CHUNK):
        part = ids[start : start + _CHUNK]
        marks = ",".join("?" * len(part))
        for r in tx.execute(
            f"SELECT id, name, sha256, labelled FROM images WHERE dataset = ? AND id IN ({marks})",
            (dataset, *part),
        ):
            rows[r[0]] = r
    for image, field in zip(ids, fields, strict=True):
        if image not in rows:
            raise RequestError(f"{field}: dataset {dataset} has no image {image}", field=field, status=404)
    labels = labels_of(tx, dataset, [rows[i][1] for i in ids])
    return {
        i: Current(i, rows[i][1], rows[i][2], bool(rows[i][3]), labels.get(rows[i][1], frozenset()))
        for i in ids
    }


def labels_of(tx: Transaction | Database, dataset: int, names: Sequence[str]) -> dict[str, frozenset[str]]:
    """Each named image's labels now (absent: none)."""
    out: dict[str, set[str]] = {}
    run = tx.execute if isinstance(tx, Transaction) else tx.all
    for start in range(0, len(names), _CHUNK):
        part = list(names[start : start + _CHUNK])
        marks = ",".join("?" * len(part))
        for r in run(
            f"SELECT name, label FROM image_labels WHERE dataset = ? AND name IN ({marks})", (dataset, *part)
        ):
            out.setdefault(r[0], set()).add(r[1])
    return {k: frozenset(v) for k, v in out.items()}


def check_removals(change: Change, known: set[str]) -> None:
    for i, label in enumerate(change.remove):
        if label not in known:
            field = f"remove[{i}]"
            raise RequestError(f"{field}: {label[:100]!r} is not a label of this dataset", field=field)


def write_changes(
    tx: Transaction, dataset: int, updates: Iterable[tuple[Current, frozenset[str]]], source: str
) -> tuple[int, int]:
    """Set each image's new labels; one event per changed image, one version bump. -> (changed, version)."""
    version = current_version(tx, dataset) + 1
    now, changed, new_names = time.time(), 0, set()
    for image, labels in updates:
        if image.labelled and image.labels == labels:
            continue
        tx.execute("DELETE FROM image_labels WHERE dataset = ? AND name = ?", (dataset, image.name))
        tx.executemany(
            "INSERT INTO image_labels (dataset, name, label) VALUES (?, ?, ?)",
            [(dataset, image.name, x) for x in sorted(labels)],
        )
        tx.execute("UPDATE images SET labelled = 1 WHERE id = ?", (image.id,))
        tx.execute(
            "INSERT INTO label_events (dataset, name, version, labels, source, at) VALUES (?, ?, ?, ?, ?, ?)",
            (dataset, image.name, version, json.dumps(sorted(labels)), source, now),
        )
        new_names |= labels
        changed += 1
    if not changed:
        return 0, version - 1
    tx.executemany(
        "INSERT OR IGNORE INTO labels (dataset, label) VALUES (?, ?)",
        [(dataset, x) for x in sorted(new_names)],
    )
    tx.execute("UPDATE datasets SET version = ? WHERE id = ?", (version, dataset))
    return changed, version


def edit(
    db: Database, dataset: int, ids: list[int], change: Change, source: str, fields: Sequence[str]
) -> tuple[list[Current], int, int]:
    """Apply one change to the images `ids` (404 naming `fields`) -> (the images after, changed, version)."""
    with db.transaction() as tx:
        current_version(tx, dataset)  # 404 for the dataset before its images
        images = load_current(tx, dataset, ids, fields)
        check_removals(change, known_labels(tx, dataset))
        updates = [(images[i], change.apply(images[i].labels)) for i in ids]
        changed, version = write_changes(tx, dataset, updates, source)
    after = [Current(im.id, im.name, im.sha256, True, labels) for im, labels in updates]
    return after, changed, version


# --- reading ------------------------------------------------------------------------------------------


def label_names(db: Database, dataset: int) -> list[str]:
    return [r[0] for r in db.all("SELECT label FROM labels WHERE dataset = ? ORDER BY label", (dataset,))]


def page_of(
    db: Database, dataset: int, *, unlabelled: bool, label: str | None, offset: int, limit: int
) -> tuple[int, list[Current]]:
    """(total, one page) of the dataset's images by name, all or unlabelled, optionally having `label`."""
    where, params = "i.dataset = ?", [dataset]
    if unlabelled:
        where += " AND i.labelled = 0"
    if label is not None:
        where += (
            " AND EXISTS (SELECT 1 FROM image_labels l"
            " WHERE l.dataset = i.dataset AND l.name = i.name AND l.label = ?)"
        )
        params.append(label)
    total = db.one(f"SELECT COUNT(*) FROM images i WHERE {where}", params)[0]
    rows = db.all(
        f"SELECT i.id FROM images i WHERE {where} ORDER BY i.name LIMIT ? OFFSET ?", (*params, limit, offset)
    )
    return total, images_by_id(db, dataset, [r[0] for r in rows])


def images_by_id(db: Database, dataset: int, ids: Sequence[int], field: str = "image_id") -> list[Current]:
    """The images `ids` in that order (one consistent read); 404 naming `field` for an unknown one."""
    with db.transaction() as tx:
        found = load_current(tx, dataset, list(ids), [field] * len(ids))
    return [found[i] for i in ids]


def history(db: Database, dataset: int, name: str) -> list[dict[str, Any]]:
    rows = db.all(
        "SELECT version, labels, source, at FROM label_events WHERE dataset = ? AND name = ? ORDER BY id",
        (dataset, name),
    )
    return [{"version": r[0], "labels": json.loads(r[1]), "source": r[2], "at": r[3]} for r in rows]


def labels_at(db: Database, dataset: int, version: int) -> list[tuple[str, list[str]]]:
    """Every image labelled at `version` with its labels then: added by then, its last event by then."""
    rows = db.all(
        "SELECT i.name, e.labels FROM images i "
        "JOIN label_events e ON e.dataset = i.dataset AND e.name = i.name "
        "WHERE i.dataset = ? AND i.added <= ? AND e.id = (SELECT MAX(id) FROM label_events "
        "WHERE dataset = i.dataset AND name = i.name AND version <= ?) ORDER BY i.name",
        (dataset, version, version),
    )
    return [(r[0], json.loads(r[1])) for r in rows]
