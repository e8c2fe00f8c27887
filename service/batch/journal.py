"""The batch client's journal: what a run has answered, durable before it counts as done.

Journal (`<output>/journal.jsonl`): UTF-8 JSON lines, append-only, flushed and fsync'd after each
answered request. Records, by "kind":
  header  first line: journal version, images root, shard, which, model, precision (null for auto,
          as in journals from before it), threshold(s); a rerun with other options is refused (their
          answers would not belong in the same output), unless the journal holds nothing but its header.
  model   {"name", "version", "which", "labels", "thresholds"} the first time a model version answers.
  done    {"file", "version", "scores", "predicted"[, "thresholds"]}: "above" is `label in predicted`
          and "thresholds" come from the model record unless they differ, to keep lines short.
  failed  {"file", "status", "reason", "retry"}: retry=false for 4xx answers, unreadable and too
          large files (skipped by later runs unless `retry_failed`), true for transient errors.
A later record for the same file replaces an earlier one. A torn last line (the process died while
writing it) is cut off when the journal is opened; a damaged line before the last is an error.

Memory: opening streams the file and keeps a `DoneIndex` (24 bytes a done file), the failed records'
(file, status, reason, retry) and the model records; done records are read back from disk, one at a
time, when the final file is written (`done_records`).

Journals written before `--which` existed record best/last under "model"; they are read as
which=<that>, model=None, so a rerun of the same command resumes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from service.batch.index import DoneIndex
from service.errors import BatchError

logger = logging.getLogger(__name__)

JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = ".lock"
JOURNAL_VERSION = 1
HEADER_KEYS = ("journal", "images", "shard", "which", "model", "precision", "threshold", "thresholds")


class Failure(NamedTuple):
    status: int | None
    reason: str
    retry: bool


class Journal:
    """Append-only JSON-lines record of a batch run; see the module docstring for the records."""

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self.path = path
        self._file = file
        self.done = DoneIndex()  # file -> offset of its done record
        self.failed: dict[str, Failure] = {}  # file -> its latest failure
        self.models: dict[str, dict[str, Any]] = {}  # version -> model record

    @classmethod
    def open(cls, path: Path, header: dict[str, Any]) -> Journal:
        """Read what a previous run left (cutting a torn last line), check its header, open for appending."""
        path.parent.mkdir(parents=True, exist_ok=True)
        journal = cls(path, open(path, "a+b"))  # noqa: SIM115 - closed by close()
        try:
            found, records = journal._load()
            if found is not None and found.get("kind") != "header":
                raise BatchError(f"{path} does not start with a header record: not a manylabel journal")
            if found is None or (records == 0 and _differs(found, header)):
                journal._file.truncate(0)  # empty, or no answer yet to keep: take this run's options
                journal.append([header])
            else:
                check_header(path, found, header)
        except BaseException:
            journal.close()
            raise
        return journal

    def _load(self) -> tuple[dict[str, Any] | None, int]:
        """Index the journal line by line; (its first record, how many records follow it)."""
        self._file.seek(0)
        first, count, offset = None, 0, 0
        for number, line in enumerate(self._file, 1):
            try:
                if not line.endswith(b"\n"):  # the write was cut short
                    raise ValueError("torn")
                record = json.loads(line) if line.strip() else None
            except ValueError:
                if self._file.read(1):
                    raise BatchError(
                        f"{self.path}:{number} is not a JSON record: the journal is damaged; "
                        "move it away to start over"
                    ) from None
                logger.warning("%s: dropping a torn last line (%d bytes)", self.path, len(line))
                self._file.truncate(offset)
                break
            if record is not None:
                if first is None:
                    first = record
                else:
                    count += 1
                    self._index(record, offset)
            offset += len(line)
        self.done.compact()
        self._file.seek(0, os.SEEK_END)
        return first, count

    def _index(self, record: dict[str, Any], offset: int) -> None:
        kind = record.get("kind")
        if kind == "done":
            self.done.add(record["file"], offset)
            self.failed.pop(record["file"], None)
        elif kind == "failed":
            self.done.discard(record["file"])
            self.failed[record["file"]] = Failure(record["status"], record["reason"], record["retry"])
        elif kind == "model":
            self.models[record["version"]] = record

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write records and make them durable before returning."""
        offset = self._file.seek(0, os.SEEK_END)
        lines = []
        for record in records:
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
            self._index(record, offset)
            offset += len(line)
            lines.append(line)
        self._file.write(b"".join(lines))
        self._file.flush()
        os.fsync(self._file.fileno())

    def done_records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(offset, record) of each file's latest done record, in journal order, one line in memory."""
        with open(self.path, "rb") as f:
            offset = 0
            for line in f:
                record = json.loads(line) if line.strip() else {}
                if record.get("kind") == "done" and self.done.get(record["file"]) == offset:
                    yield offset, record
                offset += len(line)

    def read(self, entries: Iterable[tuple[str, int]]) -> Iterator[tuple[str, dict[str, Any]]]:
        """(file, record at offset) for each (file, offset), in that order."""
        with open(self.path, "rb") as f:
            for relpath, offset in entries:
                f.seek(offset)
                yield relpath, json.loads(f.readline())

    def close(self) -> None:
        self._file.close()


def upgrade_header(found: dict[str, Any]) -> dict[str, Any]:
    """A header from before `--which`: its "model" was best/last."""
    if "which" in found or found.get("kind") != "header":
        return found
    return {**found, "which": found.get("model"), "model": None}


def _differs(found: dict[str, Any], wanted: dict[str, Any]) -> bool:
    found = upgrade_header(found)
    return any(found.get(key) != wanted.get(key) for key in HEADER_KEYS)


def check_header(path: Path, found: dict[str, Any], wanted: dict[str, Any]) -> None:
    found = upgrade_header(found)
    for key in HEADER_KEYS:
        if found.get(key) != wanted.get(key):
            raise BatchError(
                f"{path} was written with {key}={found.get(key)!r}, this run asks for "
                f"{wanted.get(key)!r}: rerun with the same options, or use another --output"
            )


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchError(f"another batch client is writing to {lock_path.parent}") from None
        yield
