"""Sending a batch run's images: groups, requests in flight, and what each answer leaves in the journal.

A request the service does not answer with 200 is split in two and each half sent again, down to
single images, so one bad image (refused, or making the service fail) costs its request-mates
nothing and only it is recorded as failed, with the service's reason. Two refusals split nothing:
one that blames an option (the error body's "field" is one this run sent, e.g. an unknown --model)
stops the run, since every image would get it; and a request that ran out of retries on overload
or connection errors stops the run too (the service is down: a rerun resumes). Files larger than
the service accepts (`GET /model`'s serving.max_request_bytes, or --max-file-bytes) are recorded
as failed without being read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from service.batch.http import RETRY_STATUSES, Outcome, get_model, post_images
from service.batch.journal import Journal
from service.batch.options import BatchOptions

Progress = Callable[[int, int], None]  # (answered, failed) since the last call


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
        self.fields = options.form_fields()
        self.rng = random.Random()
        self.stopped: str | None = None  # the service stayed unavailable: a rerun resumes
        self.refused: str | None = None  # the service refused this run's options: a rerun cannot help

    async def send_all(self, items: Iterator[Item]) -> None:
        first = next(items, None)
        if first is None:  # nothing to send: the service is not needed
            return
        options = self.options
        task, loop = asyncio.current_task(), asyncio.get_running_loop()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):  # Kubernetes stops a Job pod with SIGTERM
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
                loop.add_signal_handler(sig, task.cancel)
        limits = httpx.Limits(
            max_connections=options.concurrency, max_keepalive_connections=options.concurrency
        )
        timeout = httpx.Timeout(options.timeout_s, connect=min(10.0, options.timeout_s))
        client = httpx.AsyncClient(
            base_url=options.url, timeout=timeout, limits=limits, transport=self.transport
        )
        try:
            async with client:
                limit = await self.file_limit(client)
                if limit is not None:
                    small = self.small_enough(itertools.chain([first], items), *limit)
                    groups = chunks(small, options.per_request, min(options.max_request_bytes, limit[0]))
                    await self.send_groups(client, groups)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                    loop.remove_signal_handler(sig)

    async def send_groups(self, client: httpx.AsyncClient, groups: Iterator[list[Item]]) -> None:
        queue: asyncio.Queue[list[Item] | None] = asyncio.Queue(maxsize=2 * self.options.concurrency)

        async def worker() -> None:
            while (group := await queue.get()) is not None:
                await self.score(client, group)  # once the run stops, this only drains the queue

        workers = [asyncio.create_task(worker()) for _ in range(self.options.concurrency)]
        try:
            for group in groups:  # the walk advances only as fast as requests are answered
                if self.stopped or self.refused:
                    break
                await queue.put(group)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def file_limit(self, client: httpx.AsyncClient) -> tuple[int, str] | None:
        """(the largest file to send, where that number comes from); None when the run cannot go on."""
        if self.options.max_file_bytes is not None:
            return self.options.max_file_bytes, "--max-file-bytes"
        outcome = await get_model(client, self.options.retry, self.rng)
        serving = (outcome.answer or {}).get("serving")
        limit = serving.get("max_request_bytes") if isinstance(serving, dict) else None
        if isinstance(limit, int) and limit > 0:
            return limit, "the service's max_request_bytes"
        if outcome.answer is None and outcome.retry:
            self.stopped = f"GET /model: {outcome.reason}"
        else:
            reason = outcome.reason or "the answer has no serving.max_request_bytes"
            self.refused = f"GET /model: {reason}; give --max-file-bytes to go without it"
        return None

    def small_enough(self, items: Iterable[Item], limit: int, source: str) -> Iterator[Item]:
        """The items of at most `limit` bytes; the others are recorded as failed, unread."""
        for item in items:
            if item.size <= limit:
                yield item
            else:
                reason = f"too large: {item.size:,} bytes, over the limit of {limit:,} ({source}); not sent"
                self._record([_failed(item, None, reason, retry=False)], 0, 1)

    async def score(self, client: httpx.AsyncClient, group: list[Item]) -> None:
        """Send one group; journal its answers, or its failures (see the module docstring)."""
        if self.stopped or self.refused:
            return  # not journaled: a rerun sends them
        group, files, unreadable = await asyncio.to_thread(_read, group)
        if unreadable:
            self._record(unreadable, 0, len(unreadable))
        if not group:
            return
        outcome = await post_images(client, files, self.fields, self.options.retry, self.rng)
        del files  # before sending halves again, which read their files anew
        got = len(outcome.answer["images"]) if outcome.answer is not None else len(group)
        if got != len(group):
            reason = f"the answer lists {got} images for {len(group)} sent"
            outcome = Outcome(status=200, reason=reason, retry=True)
        if outcome.answer is not None:
            self._record(_done_records(self.journal, group, outcome.answer), len(group), 0)
        elif outcome.status is not None and 400 <= outcome.status < 500 and outcome.field in self.fields:
            self.refused = f"the service refused this run's options: {outcome.reason}"
        elif outcome.retry and (outcome.status is None or outcome.status in RETRY_STATUSES):
            # Retries ran out on a dead or saturated service: going on would only turn the rest of
            # the folder into failures. Stop; a rerun resumes once the service is back.
            self._record(
                [_failed(item, outcome.status, outcome.reason, retry=True) for item in group], 0, len(group)
            )
            self.stopped = outcome.reason
        elif len(group) > 1:
            half = len(group) // 2
            await self.score(client, group[:half])
            await self.score(client, group[half:])
        else:
            self._record([_failed(group[0], outcome.status, outcome.reason, retry=outcome.retry)], 0, 1)

    def _record(self, records: list[dict[str, Any]], answered: int, failed: int) -> None:
        self.journal.append(records)
        if self.progress is not None:
            self.progress(answered, failed)


def _read(group: list[Item]) -> tuple[list[Item], list[tuple[str, bytes]], list[dict[str, Any]]]:
    """(readable items, (name, bytes) of each, failed records of the others); run off the event loop.

    Base names only: a deep relative path could pass the service's 255-byte name limit; the answer
    lists the images in the order sent.
    """
    readable, files, unreadable = [], [], []
    for item in group:
        try:
            files.append((PurePosixPath(item.relpath).name, item.path.read_bytes()))
        except OSError as exc:
            unreadable.append(_failed(item, None, f"cannot read the file: {exc}", retry=False))
        else:
            readable.append(item)
    return readable, files, unreadable


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
