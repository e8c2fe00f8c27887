"""The jobs: their rows in SQLite, the view GET /jobs/{id} answers, and change notifications.

A job's view is its row (state, model, error, times) plus its last progress view (stage, progress,
epoch, losses, ETA: `progress.Tracker`). While a job runs its view changes several times a second:
the newest is kept in memory and written to the database at most every `PERSIST_EVERY_S` and at each
state change, so a restart shows where the job was. Everything here runs on the server's event
loop (the runner and the routes), so the notifications need no locks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from service.errors import RequestError
from service.studio.db import Database
from service.studio.plan import History

STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = frozenset({"done", "failed", "cancelled"})
PERSIST_EVERY_S = 2.0
HISTORY_JOBS = 10  # finished jobs pooled for the estimates
VIEW_KEYS = (
    "stage",
    "progress",
    "epoch",
    "best_epoch",
    "train_loss",
    "val_loss",
    "eta_s",
    "featurised",
    "to_featurise",
)


class JobBook:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._views: dict[int, dict[str, Any]] = {}  # live progress views of running jobs
        self._events: dict[int, asyncio.Event] = {}
        self._persisted: dict[int, float] = {}

    def add(
        self,
        dataset: int,
        version: int,
        name: str,
        spec: dict,
        view: dict,
        *,
        before_commit: Callable[[int], None],
    ) -> int:
        """Queue a job; `before_commit(id)` runs inside the transaction (the job folder's rename)."""
        with self.db.transaction() as tx:
            cursor = tx.execute(
                "INSERT INTO jobs (dataset, dataset_version, name, spec, state, view, created) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                (dataset, version, name, json.dumps(spec), json.dumps(view), time.time()),
            )
            job = int(cursor.lastrowid or 0)
            before_commit(job)
        return job

    def row(self, job: int) -> dict[str, Any]:
        found = self.db.one("SELECT * FROM jobs WHERE id = ?", (job,))
        if found is None:
            raise RequestError(f"id: no job {job}; GET /jobs lists them", field="id", status=404)
        return dict(found)

    def get(self, job: int) -> dict[str, Any]:
        return self._view(self.row(job))

    def list(self) -> list[dict[str, Any]]:
        return [self._view(dict(r)) for r in self.db.all("SELECT * FROM jobs ORDER BY id DESC")]

    def next_queued(self) -> dict[str, Any] | None:
        found = self.db.one("SELECT * FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1")
        return dict(found) if found else None

    def unfinished(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.all("SELECT * FROM jobs WHERE state IN ('queued', 'running')")]

    def check_name_free(self, name: str) -> None:
        """A second job may not train the model a queued or running one trains."""
        busy = self.db.one(
            "SELECT id, state FROM jobs WHERE name = ? AND state IN ('queued', 'running')", (name,)
        )
        if busy is not None:
            raise RequestError(
                f"name: job {busy['id']} ({busy['state']}) already trains {name!r}; wait for it, cancel it "
                "(DELETE /jobs/{id}) or choose another name",
                field="name",
                status=409,
            )

    def update(self, job: int, view: dict[str, Any] | None = None, **columns: Any) -> None:
        """Change a job's columns and/or progress view; persisted at once when `columns` change."""
        if view is not None:
            self._views[job] = {**self._views.get(job, {}), **view}
        now = time.monotonic()
        if columns or now - self._persisted.get(job, 0.0) >= PERSIST_EVERY_S:
            self._persisted[job] = now
            if job in self._views:
                columns["view"] = json.dumps(self._views[job])
            if columns:
                sets = ", ".join(f"{key} = ?" for key in columns)
                with self.db.transaction() as tx:
                    tx.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*columns.values(), job))
        if columns.get("state") in TERMINAL:
            self._views.pop(job, None)
            self._persisted.pop(job, None)
        self._notify(job)

    def _notify(self, job: int) -> None:
        event = self._events.pop(job, None)
        if event is not None:
            event.set()

    async def changes(self, job: int, *, keepalive_s: float = 15.0) -> AsyncIterator[dict[str, Any] | None]:
        """The job's view now and after every change until it ends; None after `keepalive_s` of quiet."""
        last = None
        while True:
            event = self._events.setdefault(job, asyncio.Event())
            view = self.get(job)
            if view != last:
                yield view
                last = view
            if view["state"] in TERMINAL:
                return
            try:
                await asyncio.wait_for(event.wait(), keepalive_s)
            except TimeoutError:
                yield None

    def history(self) -> History:
        rows = self.db.all(
            "SELECT measured FROM jobs WHERE state = 'done' ORDER BY id DESC LIMIT ?", (HISTORY_JOBS,)
        )
        return History.pool([json.loads(r["measured"]) for r in rows])

    def _view(self, row: dict[str, Any]) -> dict[str, Any]:
        view = {key: None for key in VIEW_KEYS}
        view.update(json.loads(row["view"] or "{}"))
        view.update(self._views.get(row["id"], {}))
        if row["state"] == "done":
            view.update(progress=1.0, eta_s=0.0)
        elif row["state"] in TERMINAL:
            view["eta_s"] = None
        return {
            "id": row["id"],
            "state": row["state"],
            **view,
            "model": row["model"],
            "error": row["error"],
            "name": row["name"],
            "dataset": row["dataset"],
            "dataset_version": row["dataset_version"],
            "created": row["created"],
            "started": row["started"],
            "finished": row["finished"],
            "request": json.loads(row["spec"]),
        }
