"""The studio's SQLite database: schema, one connection behind a lock, one transaction per change.

SQLite from the standard library, in WAL mode (readers never wait for the writer, and a crash
mid-transaction leaves the last committed state), `synchronous=FULL` (a committed upload survives a
power cut). The server's requests reach it from worker threads; one connection behind a lock keeps
them in order, which is plenty for one team's studio.

Every dataset has a `version` counter that each change of its images or labels bumps (once per
request); `label_events` keeps each image's labels after every change (its history), so a dataset at
any version can be rebuilt; a job records the version it trained on.

Schema 2 (labelling in the page) gives every image an id for the HTTP API: `images.id` is an
`INTEGER PRIMARY KEY AUTOINCREMENT`, i.e. the rowid itself, which VACUUM keeps (an implicit rowid it
may renumber) and which is never given to another image. It adds `decisions` (accepted / rejected
suspects, never suggested again) and `suggestion_scores` (a model's scores of an image content). A
schema-1 database is migrated in place when the studio opens it (`migrate_1_to_2`, one transaction).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE datasets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    version INTEGER NOT NULL DEFAULT 0,   -- bumped by every change of its images or labels
    created REAL NOT NULL
);
-- One row per stored file content: images/<sha256[:2]>/<sha256>.
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT, -- the rowid: stable through VACUUM, never reused
    dataset INTEGER NOT NULL REFERENCES datasets(id),
    name TEXT NOT NULL,                   -- relative POSIX path, as uploaded (zip member path)
    sha256 TEXT NOT NULL REFERENCES blobs(sha256),
    added INTEGER NOT NULL,               -- the dataset version that added it
    labelled INTEGER NOT NULL DEFAULT 0,  -- 1 once its labels are set (no labels = a negative)
    UNIQUE (dataset, name)
);
CREATE INDEX images_by_sha ON images(sha256);
-- The dataset's label names: a one-hot header may name a label no image has yet.
CREATE TABLE labels (
    dataset INTEGER NOT NULL REFERENCES datasets(id),
    label TEXT NOT NULL,
    PRIMARY KEY (dataset, label)
);
-- The labels now, one row per (image, positive label).
CREATE TABLE image_labels (
    dataset INTEGER NOT NULL,
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (dataset, name, label),
    FOREIGN KEY (dataset, name) REFERENCES images(dataset, name)
);
-- History: an image's labels after each change, in order (source: 'csv:<file>', 'edit', 'bulk',
-- 'suspect').
CREATE TABLE label_events (
    id INTEGER PRIMARY KEY,
    dataset INTEGER NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    labels TEXT NOT NULL,                 -- JSON list, sorted
    source TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX label_events_by_image ON label_events(dataset, name, id);
-- Contents whose bottleneck features training has cached (keyed by backbone + sha256), as learnt
-- from finished jobs: what the next job need not featurise again.
CREATE TABLE featurised (
    sha256 TEXT NOT NULL,
    backbone TEXT NOT NULL,
    job INTEGER NOT NULL,
    PRIMARY KEY (sha256, backbone)
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    dataset INTEGER NOT NULL REFERENCES datasets(id),
    dataset_version INTEGER NOT NULL,     -- the version exported into the job folder
    name TEXT NOT NULL,                   -- the model name
    spec TEXT NOT NULL,                   -- JSON: the request, as validated
    state TEXT NOT NULL,                  -- queued | running | done | failed | cancelled
    view TEXT NOT NULL DEFAULT '{}',      -- JSON: the last progress shown (stage, epoch, losses...)
    model TEXT,                           -- NAME:VERSION once done
    error TEXT,
    pid INTEGER,                          -- the training process (its own process group)
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    measured TEXT NOT NULL DEFAULT '{}'   -- JSON: feature rate, seconds per epoch... for estimates
);
CREATE INDEX jobs_by_state ON jobs(state, id);
"""
# Schema 2's additions; a new database gets them with SCHEMA, a schema-1 one in `migrate_1_to_2`.
SCHEMA_2 = """
-- A person's verdict on a suspected label error: the pair is not suggested again for the dataset.
CREATE TABLE decisions (
    dataset INTEGER NOT NULL REFERENCES datasets(id),
    image INTEGER NOT NULL REFERENCES images(id),
    label TEXT NOT NULL,
    decision TEXT NOT NULL,               -- accept | reject
    model TEXT,                           -- NAME:VERSION that suggested it, when known
    at REAL NOT NULL,
    PRIMARY KEY (dataset, image, label)
);
-- A model's scores of an image content (suggestions for unlabelled images), computed once.
CREATE TABLE suggestion_scores (
    model TEXT NOT NULL,                  -- NAME:VERSION
    sha256 TEXT NOT NULL,
    scores TEXT NOT NULL,                 -- JSON list aligned with the model's labels
    PRIMARY KEY (model, sha256)
);
"""
# Schema 1 kept images in a table keyed by (dataset, name) with an implicit rowid: rebuilt with the
# id column (the old rowids become the ids), following SQLite's recipe for a changed table.
MIGRATE_1_TO_2 = """
CREATE TABLE images_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset INTEGER NOT NULL REFERENCES datasets(id),
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL REFERENCES blobs(sha256),
    added INTEGER NOT NULL,
    labelled INTEGER NOT NULL DEFAULT 0,
    UNIQUE (dataset, name)
);
INSERT INTO images_v2 (id, dataset, name, sha256, added, labelled)
    SELECT rowid, dataset, name, sha256, added, labelled FROM images ORDER BY rowid;
DROP TABLE images;
ALTER TABLE images_v2 RENAME TO images;
CREATE INDEX images_by_sha ON images(sha256);
"""


class Database:
    """One SQLite connection shared by the server's threads, behind a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            self._conn.execute(f"PRAGMA {pragma}")
        with self.transaction() as tx:
            version = tx.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                tx.executescript_in_tx(SCHEMA + SCHEMA_2)
                tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version not in (1, SCHEMA_VERSION):
                raise RuntimeError(f"{path}: schema version {version}, this manylabel knows {SCHEMA_VERSION}")
        if version == 1:
            self.migrate_1_to_2()

    def migrate_1_to_2(self) -> None:
        """Schema 1 -> 2 in one transaction: images get their id column, the new tables are made.

        Foreign keys are off meanwhile (SQLite cannot switch them inside a transaction, and dropping
        the old images table would otherwise check the rows that refer to it); the references are
        checked before the commit: a migration that broke one is rolled back.
        """
        with self._lock:
            self._conn.execute("PRAGMA foreign_keys=OFF")
            try:
                with self.transaction() as tx:
                    if tx.execute("PRAGMA user_version").fetchone()[0] != 1:
                        return  # migrated meanwhile
                    before = len(tx.execute("PRAGMA foreign_key_check").fetchall())
                    tx.executescript_in_tx(MIGRATE_1_TO_2 + SCHEMA_2)
                    after = len(tx.execute("PRAGMA foreign_key_check").fetchall())
                    if after > before:  # rolled back: the database stays at schema 1
                        raise RuntimeError(
                            f"studio database: migrating to schema 2 broke {after - before} references"
                        )
                    tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            finally:
                self._conn.execute("PRAGMA foreign_keys=ON")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception: all of a change or none of it."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class Transaction:
    """The statements of one transaction (only valid inside `Database.transaction()`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> sqlite3.Cursor:
        return self._conn.executemany(sql, rows)

    def executescript_in_tx(self, script: str) -> None:
        # executescript() would COMMIT first: run the statements one by one inside the transaction.
        statement = ""
        for line in script.splitlines(keepends=True):
            statement += line
            if sqlite3.complete_statement(statement):
                self._conn.execute(statement)
                statement = ""
