"""The studio's SQLite database: schema, one connection behind a lock, one transaction per change.

SQLite from the standard library, in WAL mode (readers never wait for the writer, and a crash
mid-transaction leaves the last committed state), `synchronous=FULL` (a committed upload survives a
power cut). The server's requests reach it from worker threads; one connection behind a lock keeps
them in order, which is plenty for one team's studio.

The schema is made for what comes next (labelling in the page): every dataset has a `version`
counter that each change of its images or labels bumps; `label_events` keeps each image's labels
after every change (its history), so a dataset at any version can be rebuilt; a job records the
version it trained on.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
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
    dataset INTEGER NOT NULL REFERENCES datasets(id),
    name TEXT NOT NULL,                   -- relative POSIX path, as uploaded (zip member path)
    sha256 TEXT NOT NULL REFERENCES blobs(sha256),
    added INTEGER NOT NULL,               -- the dataset version that added it
    labelled INTEGER NOT NULL DEFAULT 0,  -- 1 once a labels row names it (no labels = a negative)
    PRIMARY KEY (dataset, name)
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
-- History: an image's labels after each change, in order (source: 'csv:<file>' now; 'edit' next).
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
                tx.executescript_in_tx(SCHEMA)
                tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise RuntimeError(f"{path}: schema version {version}, this manylabel knows {SCHEMA_VERSION}")

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
