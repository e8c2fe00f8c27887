"""The batch client's journal: what a run has answered, durable before it counts as done.

Journal (`<output>/journal.jsonl`): UTF-8 JSON lines, append-only, flushed and fsync'd after each
answered request. Records, by "kind":
  header  first line: journal version, images root, shard, model, threshold(s); a rerun with other
          options is refused (their answers would not belong in the same output).
  model   {"name", "version", "which", "labels", "thresholds"} the first time a model version answers.
  done    {"file", "version", "scores", "predicted"[, "thresholds"]}: "above" is `label in predicted`
          and "thresholds" come from the model record unless they differ, to keep lines short.
  failed  {"file", "status", "reason", "retry"}: retry=false for 4xx answers and unreadable files
          (skipped by later runs unless `retry_failed`), true for transient errors (retried).
A later record for the same file replaces an earlier one. A torn last line (the process died while
writing it) is cut off when the journal is opened; a damaged line before the last is an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from service.errors import BatchError

logger = logging.getLogger(__name__)

JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = ".lock"
JOURNAL_VERSION = 1


class Journal:
    """Append-only JSON-lines record of a batch run; see the module docstring for the records."""

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self.path = path
        self._file = file
        self.done: dict[str, int] = {}  # file -> offset of its done record
        self.failed: dict[str, dict[str, Any]] = {}  # file -> its failed record
        self.models: dict[str, dict[str, Any]] = {}  # version -> model record

    @classmethod
    def open(cls, path: Path, header: dict[str, Any]) -> Journal:
        """Read what a previous run left (cutting a torn last line), check its header, open for appending."""
        path.parent.mkdir(parents=True, exist_ok=True)
        journal = cls(path, open(path, "a+b"))  # noqa: SIM115 - closed by close()
        records = journal._load()
        if not records:
            journal.append([header])
        elif records[0].get("kind") != "header":
            raise BatchError(f"{path} does not start with a header record: not a manylabel journal")
        else:
            check_header(path, records[0], header)
        return journal

    def _load(self) -> list[dict[str, Any]]:
        self._file.seek(0)
        data = self._file.read()
        records, offset, lines = [], 0, data.split(b"\n")
        for number, line in enumerate(lines, 1):
            last = number == len(lines)
            if not line:
                offset += 1
                continue
            try:
                if last:  # no newline after it: the write was cut short
                    raise ValueError("torn")
                record = json.loads(line)
            except ValueError:
                if number < len(lines) - 1:
                    raise BatchError(
                        f"{self.path}:{number} is not a JSON record: the journal is damaged; "
                        "move it away to start over"
                    ) from None
                logger.warning("%s: dropping a torn last line (%d bytes)", self.path, len(line))
                self._file.truncate(offset)
                break
            self._index(record, offset)
            records.append(record)
            offset += len(line) + 1
        self._file.seek(0, os.SEEK_END)
        return records

    def _index(self, record: dict[str, Any], offset: int) -> None:
        kind = record.get("kind")
        if kind == "done":
            self.done[record["file"]] = offset
            self.failed.pop(record["file"], None)
        elif kind == "failed":
            self.done.pop(record["file"], None)
            self.failed[record["file"]] = record
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

    def read(self, offsets: Iterable[int]) -> Iterator[dict[str, Any]]:
        """The records at `offsets`, in that order."""
        with open(self.path, "rb") as f:
            for offset in offsets:
                f.seek(offset)
                yield json.loads(f.readline())

    def close(self) -> None:
        self._file.close()


def check_header(path: Path, found: dict[str, Any], wanted: dict[str, Any]) -> None:
    for key in ("journal", "images", "shard", "model", "threshold", "thresholds"):
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
