"""Batch client: push a large folder of images through a running manylabel service, resumably.

`run_batch(options)` walks `options.images` lazily, keeps `concurrency` requests of `per_request`
images in flight against `POST /predict`, and appends every answer to a journal in the output
folder before it counts as done. A rerun with the same options reads the journal, skips what is
done and sends only the rest, so a crash, a dead server or Ctrl-C loses at most the requests that
were in flight. When every image of the shard has an answer (or a failure), the final file is
rendered from the journal and written atomically. No bentoml, no torch: httpx and the standard library.

Failures (`sender`): overload and transport errors are retried; a request the service does not
answer is split until only the bad image is recorded as failed; files over the service's size limit
fail unread. When a request runs out of retries the service is taken to be down: the run stops
taking new work (rather than turning the rest of the folder into failures) and a rerun resumes.

Modules: `options` (what to do), `files` (walk order, shards), `journal` and `index` (the journal),
`http` (one request with retries), `sender` (requests in flight), `outputs` (the final file); this
one holds the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from service.batch.files import Shard, iter_images
from service.batch.http import RetryPolicy
from service.batch.journal import JOURNAL_FILE, LOCK_FILE, Journal, exclusive
from service.batch.options import BatchOptions
from service.batch.outputs import OUTPUT_NAMES, write_output
from service.batch.sender import Item, Progress, Sender
from service.errors import BatchError

__all__ = ["BatchError", "BatchOptions", "RetryPolicy", "Shard", "Summary", "run_batch"]


@dataclass
class Summary:
    total: int = 0  # images in this shard
    done: int = 0  # answered in this run
    skipped: int = 0  # answered by an earlier run
    failed: dict[str, str] = field(default_factory=dict)  # file -> reason, every run's
    transient: set[str] = field(default_factory=set)  # of the failed, those a rerun tries again
    versions: list[str] = field(default_factory=list)  # model versions that answered
    output: Path | None = None  # written only when every image of the shard was tried
    elapsed_s: float = 0.0
    interrupted: bool = False  # Ctrl-C or SIGTERM
    stopped: str | None = None  # why the run gave up early: the service stayed unavailable

    @property
    def exit_code(self) -> int:
        """0 all answered; 1 some refused (4xx, unreadable, too large); 75 unavailable: rerun; 130 Ctrl-C."""
        if self.interrupted:
            return 130
        if self.stopped or self.transient:
            return 75  # EX_TEMPFAIL: rerunning helps
        return 1 if self.failed else 0


def run_batch(
    options: BatchOptions,
    *,
    on_start: Callable[[int, int], None] | None = None,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Summary:
    """Score every image of the shard not yet in the journal, then write the final file.

    `on_start(to_send, skipped)` is called once the shard is counted; `progress` after each request;
    `transport` replaces httpx's network transport (tests, custom TLS or proxies). Raises
    `BatchError` when the service refuses the options themselves (an unknown --model, say).
    """
    if options.concurrency < 1 or options.per_request < 1:
        raise BatchError("--concurrency and --per-request must be at least 1")
    if options.max_file_bytes is not None and options.max_file_bytes < 1:
        raise BatchError("--max-file-bytes must be at least 1")
    if not options.images.exists():
        raise BatchError(f"--images {options.images} does not exist")
    options.output.mkdir(parents=True, exist_ok=True)
    with exclusive(options.output / LOCK_FILE):
        journal = Journal.open(options.output / JOURNAL_FILE, options.header())
        try:
            return _run(options, journal, on_start, Sender(options, journal, progress, transport))
        finally:
            journal.close()


def _run(
    options: BatchOptions, journal: Journal, on_start: Callable[[int, int], None] | None, sender: Sender
) -> Summary:
    start = time.monotonic()
    summary = Summary()

    def wanted(relpath: str) -> bool:
        if relpath in journal.done:
            return False
        failure = journal.failed.get(relpath)
        return failure is None or failure.retry or options.retry_failed

    counted = 0
    for relpath, _ in iter_images(options.images):  # counting pass: cheap, and gives the ETA its total
        if options.shard.owns(relpath):
            summary.total += 1
            if wanted(relpath):
                counted += 1
            elif relpath in journal.done:
                summary.skipped += 1
    if on_start:
        on_start(counted, summary.skipped)
    todo = (
        Item(relpath, path, _size(path))
        for relpath, path in iter_images(options.images)
        if options.shard.owns(relpath) and wanted(relpath)
    )
    done_before = len(journal.done)
    try:
        asyncio.run(sender.send_all(todo))
    except (KeyboardInterrupt, asyncio.CancelledError):
        summary.interrupted = True
    if sender.refused:
        raise BatchError(f"{sender.refused}; what was answered is in the journal")
    summary.stopped = sender.stopped
    summary.done = len(journal.done) - done_before
    summary.failed = {f: r.reason for f, r in journal.failed.items()}
    summary.transient = {f for f, r in journal.failed.items() if r.retry}
    summary.versions = sorted(journal.models)
    if not summary.interrupted and not summary.stopped:
        summary.output = options.output / OUTPUT_NAMES[options.format]
        write_output(journal, options.format, options.images, summary.output)
    summary.elapsed_s = time.monotonic() - start
    return summary


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # reading it fails later and records why
