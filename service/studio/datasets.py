"""Datasets: images stored once by content, names and labels in SQLite, one transaction per upload.

An image's bytes go to `images/<sha256[:2]>/<sha256>` (written to a temp file, fsync'd, renamed:
`service.files.atomic_write_bytes`), once per content whatever its names and datasets. Its name,
dataset and labels are rows of `db.py`'s tables, written in one transaction with the dataset's new
version: an upload that fails or is cut off leaves the dataset as it was. Content written by such an
upload and referenced by no row is removed by `sweep()` when the studio starts.

Uploads report, never fail on, what training would skip: files that are not images or do not decode,
CSV rows naming no image of the dataset. A name already in the dataset with other content is kept
as it was and reported (rename the new file); the same content again is simply already there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.errors import InvalidImageError, RequestError
from service.files import MAX_PATH_BYTES, atomic_write_bytes, is_junk
from service.labels_csv import LabelsCsvError, LabelsTable, read_labels, write_labels
from service.manifest import Preprocessing
from service.preprocess import IMAGE_SUFFIXES, is_image_name, load_image
from service.server.http.uploads import InputFile
from service.studio.changes import (
    Report,
    Stored,
    apply_labels,
    current_version,
    insert_dataset,
    insert_images,
    unknown_dataset,
)
from service.studio.db import Database
from service.studio.labelling import labels_at

logger = logging.getLogger("bentoml.manylabel")

MAX_DATASET_NAME = 100


@dataclass(frozen=True)
class Image:
    sha256: str
    labelled: bool
    labels: frozenset[str]


@dataclass(frozen=True)
class Snapshot:
    """A dataset at one version: what a job trains on."""

    id: int
    name: str
    version: int
    labels: list[str]  # the dataset's label names, sorted
    images: dict[str, Image]

    def labelled(self) -> dict[str, Image]:
        return {name: im for name, im in self.images.items() if im.labelled}


def clean_name(name: str) -> str | None:
    """An uploaded name as a safe relative POSIX path, or None when it cannot be one."""
    path = name.replace("\\", "/")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    unsafe = path.startswith("/") or ".." in parts or any(ord(c) < 32 for c in path)
    if unsafe or not parts or len(path.encode("utf-8")) > MAX_PATH_BYTES:
        return None
    return "/".join(parts)


class DatasetStore:
    def __init__(self, db: Database, images_dir: Path, *, max_pixels: int) -> None:
        self.db = db
        self.images_dir = images_dir
        self.max_pixels = max_pixels

    def blob_path(self, sha256: str) -> Path:
        return self.images_dir / sha256[:2] / sha256

    # --- uploads ------------------------------------------------------------------------------

    def create(self, name: str, files: Sequence[InputFile], labels: tuple[str, bytes] | None) -> dict:
        """POST /datasets: a new dataset with these images and labels, or nothing (RequestError)."""
        name = name.strip()
        if not name or len(name) > MAX_DATASET_NAME or any(ord(c) < 32 for c in name):
            raise RequestError(
                f"name: give a dataset name of 1 to {MAX_DATASET_NAME} characters", field="name"
            )
        return self._upload(None, name, files, labels)

    def add(self, dataset: int, files: Sequence[InputFile], labels: tuple[str, bytes] | None) -> dict:
        """POST /datasets/{id}/images: more images (and labels) for a dataset."""
        return self._upload(dataset, None, files, labels)

    def merge_labels(self, dataset: int, labels: tuple[str, bytes]) -> dict:
        """POST /datasets/{id}/labels: each image a row names gets that row's labels; others keep theirs."""
        return self._upload(dataset, None, [], labels)

    def _upload(
        self,
        dataset: int | None,
        name: str | None,
        files: Sequence[InputFile],
        labels: tuple[str, bytes] | None,
    ) -> dict:
        table = _read_csv(labels) if labels else None  # a bad CSV refuses the whole upload
        report = Report()
        stored = self._store_files(files, report)
        source = f"csv:{(labels[0] or 'labels.csv')[:200]}" if labels else ""
        with self.db.transaction() as tx:
            if dataset is None:
                dataset = insert_dataset(tx, name or "")
            version = current_version(tx, dataset) + 1
            changed = insert_images(tx, dataset, version, stored, report)
            if table is not None:
                changed |= apply_labels(tx, dataset, version, table, source, report)
            if changed:
                tx.execute("UPDATE datasets SET version = ? WHERE id = ?", (version, dataset))
        return {**self.summary(dataset), "problems": report.listed()}

    def _store_files(self, files: Sequence[InputFile], report: Report) -> list[Stored]:
        """Check each file, write new contents under their hash; outside the transaction (slow part)."""
        spec = Preprocessing()
        seen: dict[str, str] = {}
        stored: list[Stored] = []
        for file in files:
            name = clean_name(file.name)
            if name is None:
                report.add(file.name[:200], "not a usable file name (absolute, '..' or control characters)")
                continue
            if is_junk(name):
                continue
            if not is_image_name(name):
                report.add(name, f"not an image file name ({', '.join(sorted(IMAGE_SUFFIXES))})")
                report.skipped.add(name)
                continue
            sha = hashlib.sha256(file.data).hexdigest()
            if name in seen:
                if seen[name] != sha:
                    report.add(name, "sent twice with different contents in one upload; the first is kept")
                continue
            try:
                load_image(file.data, spec, name=name, max_pixels=self.max_pixels)  # as training decodes
            except InvalidImageError as exc:
                report.add(name, f"unreadable image, not stored: {exc}")
                report.skipped.add(name)
                continue
            seen[name] = sha
            path = self.blob_path(sha)
            if not path.exists():
                atomic_write_bytes(path, bytes(file.data))
            stored.append(Stored(name, sha, len(file.data)))
        return stored

    # --- reading --------------------------------------------------------------------------------

    def summary(self, dataset: int) -> dict:
        row = self.db.one("SELECT * FROM datasets WHERE id = ?", (dataset,))
        if row is None:
            raise unknown_dataset(dataset)
        count = self.db.one(
            "SELECT COUNT(*) AS images, COALESCE(SUM(labelled), 0) AS labelled FROM images WHERE dataset = ?",
            (dataset,),
        )
        counts = self.db.all(
            "SELECT l.label, COUNT(il.name) AS n FROM labels l LEFT JOIN image_labels il "
            "ON il.dataset = l.dataset AND il.label = l.label WHERE l.dataset = ? GROUP BY l.label "
            "ORDER BY l.label",
            (dataset,),
        )
        return {
            "id": row["id"],
            "name": row["name"],
            "version": row["version"],
            "created": row["created"],
            "images": count["images"],
            "labelled": count["labelled"],
            "unlabelled": count["images"] - count["labelled"],
            "labels": {r["label"]: r["n"] for r in counts},
        }

    def list(self) -> list[dict]:
        return [self.summary(r["id"]) for r in self.db.all("SELECT id FROM datasets ORDER BY id")]

    def find(self, ref: int | str) -> int:
        """A dataset's id from its id or its name; 404 otherwise."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            row = self.db.one("SELECT id FROM datasets WHERE id = ?", (int(ref),))
        else:
            row = self.db.one("SELECT id FROM datasets WHERE name = ?", (str(ref),))
        if row is None:
            raise unknown_dataset(ref, field="dataset")
        return row["id"]

    def snapshot(self, dataset: int) -> Snapshot:
        with self.db.transaction() as tx:  # one consistent read
            head = tx.execute("SELECT * FROM datasets WHERE id = ?", (dataset,)).fetchone()
            if head is None:
                raise unknown_dataset(dataset)
            labels = [
                r[0]
                for r in tx.execute("SELECT label FROM labels WHERE dataset = ? ORDER BY label", (dataset,))
            ]
            positives: dict[str, set[str]] = {}
            for r in tx.execute("SELECT name, label FROM image_labels WHERE dataset = ?", (dataset,)):
                positives.setdefault(r["name"], set()).add(r["label"])
            images = {
                r["name"]: Image(r["sha256"], bool(r["labelled"]), frozenset(positives.get(r["name"], ())))
                for r in tx.execute(
                    "SELECT name, sha256, labelled FROM images WHERE dataset = ? ORDER BY name", (dataset,)
                )
            }
        return Snapshot(head["id"], head["name"], head["version"], labels, images)

    def labels_csv(self, dataset: int, version: int | None = None) -> str:
        """GET /datasets/{id}/labels.csv[?version=N]: every labelled image and its labels, in the training
        format, now or as they were at version N (rebuilt from the label history)."""
        if version is None:
            snap = self.snapshot(dataset)
            return write_labels((name, im.labels) for name, im in snap.labelled().items())
        now = self.summary(dataset)["version"]
        if version < 0:
            raise RequestError(f"version: {version} is not a version (0 to {now})", field="version")
        if version > now:
            raise RequestError(
                f"version: dataset {dataset} is at version {now}; {version} does not exist yet",
                field="version",
                status=404,
            )
        return write_labels(labels_at(self.db, dataset, version))

    # --- files ----------------------------------------------------------------------------------

    def link(self, sha256: str, target: Path) -> None:
        """Put an image's bytes at `target`: a hard link to the stored content (a copy across devices)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.blob_path(sha256), target)
        except OSError:
            shutil.copyfile(self.blob_path(sha256), target)

    def sweep(self) -> int:
        """Remove contents no image references (left by interrupted uploads); at start-up only."""
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM blobs WHERE sha256 NOT IN (SELECT sha256 FROM images)")
            kept = {r[0] for r in tx.execute("SELECT sha256 FROM blobs")}
        removed = 0
        if self.images_dir.is_dir():
            for path in self.images_dir.glob("*/*"):
                if path.name not in kept:
                    path.unlink(missing_ok=True)
                    removed += 1
        if removed:
            logger.info("studio: removed %d stored files no dataset uses (interrupted uploads)", removed)
        return removed


def _read_csv(labels: tuple[str, bytes]) -> LabelsTable:
    """The uploaded labels CSV; a 400 naming the `labels` field and the line when it is unusable."""
    try:
        return read_labels(labels[1], labels[0] or "labels.csv")
    except LabelsCsvError as exc:
        raise RequestError(str(exc), field="labels") from None
