"""Batch client: push a large folder of images through a running manylabel service, resumably.

`run_batch(options)` walks `options.images` lazily, keeps `concurrency` requests of `per_request`
images in flight against `POST /predict`, and appends every answer to a journal in the output
folder before it counts as done. A rerun with the same options reads the journal, skips what is
done and sends only the rest, so a crash, a dead server or Ctrl-C loses at most the requests that
were in flight. When every image of the shard has an answer (or a failure), the final file is
rendered from the journal and written atomically. No bentoml, no torch: httpx and the standard library.

Failures: 503 / 429 / 502 / 504, connection errors and timeouts are retried with exponential backoff
and full jitter (bounded: `RetryPolicy`); other answers are not retried. A request one bad image
makes the service refuse (4xx) is resent image by image, so only that image is recorded as failed.
When a request runs out of retries the service is taken to be down: the run stops taking new work
(rather than turning the rest of the folder into failures) and a rerun resumes.

Order and shards: folders are walked depth-first, each folder's entries sorted by name (one folder
listed at a time), so the order is the lexicographic order of path components and never depends on
the file system. Shard I/N takes the files whose blake2b(relative path) % N == I: a file's shard
depends on its own path only, so shards stay stable when files are added or removed (an index
modulo N would move every later file to another shard) and need no shared listing.

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

import asyncio
import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import random
import signal
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

import httpx

from service.bundles import UNLABELED, _info, _label_folders, safe_names
from service.preprocess import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = ".lock"
JOURNAL_VERSION = 1
RETRY_STATUSES = frozenset({429, 502, 503, 504})  # overload, or a proxy that lost the pod
OUTPUT_NAMES = {"json": "predictions.json", "csv": "predictions.csv", "zip": "predictions.zip"}

Format = Literal["zip", "json", "csv"]


class BatchError(Exception):
    """The batch cannot start: bad options, a damaged journal, another client on the same output."""


# --- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N` with 0 <= I < N."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise BatchError(f"--shard {text!r} is not I/N, e.g. 0/4") from None
        if not 0 <= index < count:
            raise BatchError(f"--shard {text!r}: need 0 <= I < N")
        return cls(index, count)

    def owns(self, relpath: str) -> bool:
        if self.count == 1:
            return True
        digest = hashlib.blake2b(relpath.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8  # tries per request, the first included
    base_s: float = 0.5  # backoff before try k+1 is uniform in [0, min(cap, base * 2**k)] ("full jitter")
    cap_s: float = 30.0  # longest single wait; 8 tries wait at most ~60 s in all

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed try number `attempt` (0-based); Retry-After is a floor."""
        wait = rng.uniform(0.0, min(self.cap_s, self.base_s * 2**attempt))
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap_s))
        return wait


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


# --- walking ------------------------------------------------------------------------------------


def iter_images(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative POSIX path, path) of each image under `root`, lazily, in sorted component order.

    Hidden entries and `__MACOSX` are skipped, like zip members in the service.
    """
    root = Path(root)
    if root.is_file():
        yield root.name, root
    elif root.is_dir():
        yield from _walk(root, "")
    else:
        raise BatchError(f"--images {root} does not exist")


def _walk(folder: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)  # one folder's names in memory, not the tree's
    for entry in entries:
        if entry.name.startswith(".") or entry.name == "__MACOSX":
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), f"{prefix}{entry.name}/")
        elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
            yield prefix + entry.name, Path(entry.path)


def sort_key(relpath: str) -> tuple[str, ...]:
    """The walk order of a relative path."""
    return tuple(relpath.split("/"))


# --- journal ------------------------------------------------------------------------------------


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
            _check_header(path, records[0], header)
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


def _check_header(path: Path, found: dict[str, Any], wanted: dict[str, Any]) -> None:
    for key in ("journal", "images", "shard", "model", "threshold", "thresholds"):
        if found.get(key) != wanted.get(key):
            raise BatchError(
                f"{path} was written with {key}={found.get(key)!r}, this run asks for "
                f"{wanted.get(key)!r}: rerun with the same options, or use another --output"
            )


# --- sending ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    relpath: str
    path: Path
    size: int


@dataclass
class Outcome:
    answer: dict[str, Any] | None = None
    status: int | None = None
    reason: str = ""
    retry: bool = False  # a later run should try again
    attempts: int = 0


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


async def post_images(
    client: httpx.AsyncClient,
    files: list[tuple[str, bytes]],
    fields: dict[str, str],
    policy: RetryPolicy,
    rng: random.Random,
) -> Outcome:
    """POST /predict with retries on overload and transport errors; never retries other answers."""
    error, status = "", None
    for attempt in range(policy.attempts):
        retry_after = None
        try:
            response = await client.post(
                "/predict", data=fields, files=[("images", (name, data)) for name, data in files]
            )
        except httpx.TransportError as exc:  # connect, read, write, pool timeouts, protocol errors
            error, status = f"{type(exc).__name__}: {exc}".rstrip(": "), None
        else:
            status = response.status_code
            if status == 200:
                answer = _json(response)
                if isinstance(answer, dict) and isinstance(answer.get("images"), list):
                    return Outcome(answer=answer, status=200, attempts=attempt + 1)
                error = "HTTP 200 without a /predict answer in the body"  # a proxy's page: try again
            else:
                error = _reason(response)
                if status not in RETRY_STATUSES:
                    # 4xx: the request itself is wrong, sending it again cannot help. Other 5xx: a
                    # bug; not hammered now, but a later run tries again.
                    return Outcome(status=status, reason=error, retry=status >= 500, attempts=attempt + 1)
                retry_after = _retry_after(response)
        if attempt + 1 < policy.attempts:
            await asyncio.sleep(policy.delay(attempt, retry_after, rng))
    return Outcome(
        status=status,
        reason=f"gave up after {policy.attempts} tries: {error}",
        retry=True,
        attempts=policy.attempts,
    )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body.get("error") or body.get("message") or json.dumps(body)
    except (ValueError, AttributeError):
        message = response.text[:300]
    return f"HTTP {response.status_code}: {message}"


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


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
    with _exclusive(options.output / LOCK_FILE):
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
        write_output(journal, options, summary.output)
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


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchError(f"another batch client is writing to {lock_path.parent}") from None
        yield


# --- final outputs ------------------------------------------------------------------------------


def answers(journal: Journal) -> Iterator[dict[str, Any]]:
    """Each answered image in walk order, as the service's `/predict` answer lists it."""
    relpaths = sorted(journal.done, key=sort_key)
    for relpath, record in zip(relpaths, journal.read(journal.done[r] for r in relpaths), strict=True):
        model = journal.models[record["version"]]
        predicted = record["predicted"]
        yield {
            "filename": relpath,
            "scores": record["scores"],
            "predicted": predicted,
            "above": {label: label in predicted for label in model["labels"]},
            "thresholds": record.get("thresholds", model["thresholds"]),
        }


def _head(journal: Journal, count: int) -> dict[str, Any]:
    """The answer's model fields; the latest model record wins when several versions answered."""
    model = list(journal.models.values())[-1] if journal.models else {}
    head = {
        "model": model.get("name"),
        "version": model.get("version"),
        "which": model.get("which"),
        "labels": model.get("labels", []),
        "count": count,
    }
    if len(journal.models) > 1:
        head["versions"] = list(journal.models)
    return head


def write_json(journal: Journal, out: io.TextIOBase, *, names: list[str] | None = None) -> None:
    """The `/predict` answer for every image, plus "failed" [{filename, status, reason}], one image a line."""
    head = json.dumps(_head(journal, len(journal.done)), ensure_ascii=False)
    out.write(head[:-1] + ', "images": [')
    for i, image in enumerate(answers(journal)):
        if names is not None:
            image = {**image, "file": names[i]}
        out.write(("\n" if i == 0 else ",\n") + json.dumps(image, ensure_ascii=False))
    failed = [
        {"filename": f, "status": r["status"], "reason": r["reason"]}
        for f, r in sorted(journal.failed.items(), key=lambda kv: sort_key(kv[0]))
    ]
    out.write('\n], "failed": ' + json.dumps(failed, ensure_ascii=False) + "}\n")


def write_csv(journal: Journal, out: io.TextIOBase, *, names: list[str] | None = None) -> None:
    """`service.bundles.to_csv`'s layout; the file names are the relative paths unless `names`."""
    labels = _head(journal, 0)["labels"]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["filename", *(f"label_{i + 1}" for i in range(len(labels))), *(f"score:{lb}" for lb in labels)]
    )
    for i, image in enumerate(answers(journal)):
        predicted = image["predicted"]
        writer.writerow(
            [
                image["filename"] if names is None else names[i],
                *predicted,
                *([""] * (len(labels) - len(predicted))),
                *(repr(float(image["scores"][label])) for label in labels),
            ]
        )


def write_zip(journal: Journal, images_root: Path, out: BinaryIO) -> None:
    """`service.bundles.to_zip`'s layout, streamed: each image is read from disk when it is written."""
    relpaths = sorted(journal.done, key=sort_key)
    names = safe_names(relpaths)
    folders = _label_folders(_head(journal, 0)["labels"])
    root = images_root if images_root.is_dir() else images_root.parent
    with zipfile.ZipFile(out, "w") as archive:
        for name, image in zip(names, answers(journal), strict=True):
            try:
                data = (root / image["filename"]).read_bytes()
            except OSError as exc:
                logger.warning("%s: left out of the zip: %s", image["filename"], exc)
                continue
            for folder in [folders[label] for label in image["predicted"]] or [UNLABELED]:
                archive.writestr(_info(f"{folder}/{name}", zipfile.ZIP_STORED), data)
        for member, write in (("predictions.json", write_json), ("predictions.csv", write_csv)):
            with archive.open(_info(member, zipfile.ZIP_DEFLATED), "w") as raw:
                text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
                write(journal, text, names=names)
                text.flush()
                text.detach()


def write_output(journal: Journal, options: BatchOptions, path: Path) -> None:
    """Render the final file from the journal into a temp file, fsync, rename over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as raw:
        if options.format == "zip":
            write_zip(journal, options.images, raw)
        else:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            (write_json if options.format == "json" else write_csv)(journal, text)
            text.flush()
            text.detach()
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
