"""Batch client: push a large folder of images through a running manylabel service, resumably.

`run_batch(options)` walks `options.images` lazily, keeps `concurrency` requests of `per_request`
images in flight against `POST /predict`, and appends every answer to a journal in the output
folder before it counts as done. A rerun with the same options reads the journal, skips what is
done and sends only the rest, so a crash, a dead server or Ctrl-C loses at most the requests that
were in flight. When every image of the shard has an answer (or a failure), the final file is
rendered from the journal and written atomically. No bentoml, no torch: httpx and the standard library.

Failures: overload and transport errors are retried (`batch_http`). A request one bad image makes
the service refuse (4xx) is resent image by image, so only that image is recorded as failed. When a
request runs out of retries the service is taken to be down: the run stops taking new work (rather
than turning the rest of the folder into failures) and a rerun resumes.

Modules: `batch_files` (walk order, shards), `batch_journal` (the journal), `batch_http` (one
request with retries), `batch_outputs` (the final file); this one holds the options and the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import httpx

from service.batch_files import Shard, iter_images
from service.batch_http import RETRY_STATUSES, Outcome, RetryPolicy, post_images
from service.batch_journal import JOURNAL_FILE, JOURNAL_VERSION, LOCK_FILE, Journal, exclusive
from service.batch_outputs import OUTPUT_NAMES, Format, write_output
from service.errors import BatchError

__all__ = ["BatchError", "BatchOptions", "RetryPolicy", "Shard", "Summary", "run_batch"]

# --- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchOptions:
    url: str  # service base URL, e.g. http://manylabel
    images: Path  # a folder (walked recursively) or one image file
    output: Path  # folder for the journal and the final file
    format: Format = "json"
    concurrency: int = 4  # requests in flight
    per_request: int = 4  # images per request (measured: see the README's scaling note)
    max_request_bytes: int = 16 << 20  # a request holds fewer images when they are large
    shard: Shard = Shard()
    model: Literal["best", "last"] = "best"
    threshold: float | None = None
    thresholds: dict[str, float] | None = None
    retry: RetryPolicy = RetryPolicy()
    timeout_s: float = 120.0  # per request
    retry_failed: bool = False  # also resend images a previous run recorded as refused (4xx)

    def header(self) -> dict[str, Any]:
        return {
            "kind": "header",
            "journal": JOURNAL_VERSION,
            "images": str(self.images.resolve()),
            "shard": str(self.shard),
            "model": self.model,
            "threshold": self.threshold,
            "thresholds": self.thresholds,
        }


# --- sending ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    relpath: str
    path: Path
    size: int


def chunks(items: Iterable[Item], per_request: int, max_bytes: int) -> Iterator[list[Item]]:
    """Groups of at most `per_request` items and `max_bytes` (a larger image goes alone)."""
    group: list[Item] = []
    size = 0
    for item in items:
        if group and (len(group) == per_request or size + item.size > max_bytes):
            yield group
            group, size = [], 0
        group.append(item)
        size += item.size
    if group:
        yield group


def form_fields(options: BatchOptions) -> dict[str, str]:
    fields = {"model": options.model}
    if options.threshold is not None:
        fields["threshold"] = repr(float(options.threshold))
    if options.thresholds is not None:
        fields["thresholds"] = json.dumps(options.thresholds)
    return fields


# --- the run ------------------------------------------------------------------------------------


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
        """0 all answered; 1 some refused (4xx, unreadable); 75 unavailable, rerun; 130 interrupted."""
        if self.interrupted:
            return 130
        if self.stopped or self.transient:
            return 75  # EX_TEMPFAIL: rerunning helps
        return 1 if self.failed else 0


Progress = Callable[[int, int], None]  # (answered, failed) since the last call


def run_batch(
    options: BatchOptions,
    *,
    on_start: Callable[[int, int], None] | None = None,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Summary:
    """Score every image of the shard not yet in the journal, then write the final file.

    `on_start(to_send, skipped)` is called once the shard is counted; `progress` after each request;
    `transport` replaces httpx's network transport (tests, custom TLS or proxies).
    """
    if options.concurrency < 1 or options.per_request < 1:
        raise BatchError("--concurrency and --per-request must be at least 1")
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
        return failure is None or failure["retry"] or options.retry_failed

    counted = 0
    for relpath, _ in iter_images(options.images):  # counting pass: cheap, and gives the ETA its total
        if options.shard.owns(relpath):
            summary.total += 1
            counted += wanted(relpath)
    summary.skipped = sum(1 for relpath in journal.done if options.shard.owns(relpath))
    if on_start:
        on_start(counted, summary.skipped)
    todo = (
        Item(relpath, path, _size(path))
        for relpath, path in iter_images(options.images)
        if options.shard.owns(relpath) and wanted(relpath)
    )
    done_before = len(journal.done)
    try:
        asyncio.run(sender.send_all(chunks(todo, options.per_request, options.max_request_bytes)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        summary.interrupted = True
    summary.stopped = sender.stopped
    summary.done = len(journal.done) - done_before
    summary.failed = {f: r["reason"] for f, r in journal.failed.items()}
    summary.transient = {f for f, r in journal.failed.items() if r["retry"]}
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


class Sender:
    """Keeps `concurrency` requests in flight and journals each answer as it arrives."""

    def __init__(
        self,
        options: BatchOptions,
        journal: Journal,
        progress: Progress | None,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.options = options
        self.journal = journal
        self.progress = progress
        self.transport = transport
        self.fields = form_fields(options)
        self.rng = random.Random()
        self.stopped: str | None = None

    async def send_all(self, groups: Iterator[list[Item]]) -> None:
        options = self.options
        task, loop = asyncio.current_task(), asyncio.get_running_loop()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):  # Kubernetes stops a Job pod with SIGTERM
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
                loop.add_signal_handler(sig, task.cancel)
        queue: asyncio.Queue[list[Item] | None] = asyncio.Queue(maxsize=2 * options.concurrency)
        limits = httpx.Limits(
            max_connections=options.concurrency, max_keepalive_connections=options.concurrency
        )
        timeout = httpx.Timeout(options.timeout_s, connect=min(10.0, options.timeout_s))
        client = httpx.AsyncClient(
            base_url=options.url, timeout=timeout, limits=limits, transport=self.transport
        )

        async def worker() -> None:
            while (group := await queue.get()) is not None:
                if not self.stopped:  # once stopped, only drain the queue
                    await self.score(client, group)

        async with client:
            workers = [asyncio.create_task(worker()) for _ in range(options.concurrency)]
            try:
                for group in groups:  # the walk advances only as fast as requests are answered
                    if self.stopped:
                        break
                    await queue.put(group)
                for _ in workers:
                    await queue.put(None)
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                        loop.remove_signal_handler(sig)

    async def score(self, client: httpx.AsyncClient, group: list[Item]) -> None:
        """Send one group; journal its answers, or its failures."""
        try:
            datas = await asyncio.to_thread(lambda: [item.path.read_bytes() for item in group])
        except OSError as exc:
            if len(group) > 1:
                for item in group:
                    await self.score(client, [item])
            else:
                self._record([_failed(group[0], None, f"cannot read the file: {exc}", retry=False)], 0, 1)
            return
        # Base names only: a deep relative path could pass the service's 255-byte name limit;
        # the answer lists the images in the order sent.
        files = [(PurePosixPath(item.relpath).name, data) for item, data in zip(group, datas, strict=True)]
        outcome = await post_images(client, files, self.fields, self.options.retry, self.rng)
        if outcome.answer is not None and len(outcome.answer.get("images", [])) != len(group):
            got = len(outcome.answer.get("images", []))
            outcome = Outcome(
                status=200, reason=f"the answer lists {got} images for {len(group)} sent", retry=True
            )
        if outcome.answer is not None:
            self._record(_done_records(self.journal, group, outcome.answer), len(group), 0)
        elif outcome.status is not None and 400 <= outcome.status < 500 and len(group) > 1:
            # One bad image refuses the whole request: send them one by one to answer the others.
            for item in group:
                await self.score(client, [item])
        else:
            failed = [_failed(item, outcome.status, outcome.reason, retry=outcome.retry) for item in group]
            self._record(failed, 0, len(group))
            if outcome.retry and (outcome.status is None or outcome.status in RETRY_STATUSES):
                # Retries ran out on a dead or saturated service: going on would only turn the rest of
                # the folder into failures. Stop; a rerun resumes once the service is back.
                self.stopped = outcome.reason

    def _record(self, records: list[dict[str, Any]], answered: int, failed: int) -> None:
        self.journal.append(records)
        if self.progress is not None:
            self.progress(answered, failed)


def _failed(item: Item, status: int | None, reason: str, *, retry: bool) -> dict[str, Any]:
    return {"kind": "failed", "file": item.relpath, "status": status, "reason": reason, "retry": retry}


def _done_records(journal: Journal, group: list[Item], answer: dict[str, Any]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    version = str(answer["version"])
    model = journal.models.get(version)
    if model is None:
        first = answer["images"][0]
        model = {
            "kind": "model",
            "name": answer["model"],
            "version": version,
            "which": answer["which"],
            "labels": list(answer["labels"]),
            "thresholds": first["thresholds"],
        }
        records.append(model)
    for item, image in zip(group, answer["images"], strict=True):
        record = {
            "kind": "done",
            "file": item.relpath,
            "version": version,
            "scores": image["scores"],
            "predicted": image["predicted"],
        }
        if image["thresholds"] != model["thresholds"]:
            record["thresholds"] = image["thresholds"]
        records.append(record)
    return records
