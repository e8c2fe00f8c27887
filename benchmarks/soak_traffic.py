"""Soak test, the traffic: the mixed requests, encoded once, and the closed loop of clients that sends
them (see soak.py)."""

from __future__ import annotations

import asyncio
import io
import itertools
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 60.0  # a request without an answer by then is a failure (and its connection is reopened)
FAILED = -1  # the "status" of a connection error or a timeout


# --- the traffic ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    expected: int  # the HTTP status this request must get
    images: int  # images it holds (0 for the bad ones)
    requests: tuple[bytes, ...]  # encoded HTTP/1.1 requests, used in turn


# (field, filename or None for a text field, content type, bytes)
FormPart = tuple[str, str | None, str, bytes]


def http_request(host: str, port: int, path: str, parts: list[FormPart]) -> bytes:
    """A whole multipart POST, head and body, encoded once and sent as it is."""
    boundary = uuid.uuid4().hex
    body = bytearray()
    for field, filename, content_type, data in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        body += (f"Content-Type: {content_type}\r\n" if filename else "").encode() + b"\r\n"
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
        f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + bytes(body)


def zip_of(photos: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # JPEGs do not compress
        for name, data in photos:
            zf.writestr(f"photos/{name}", data)
    return buf.getvalue()


def build_traffic(host: str, port: int, photos: list[tuple[str, bytes]]) -> tuple[list[Kind], list[int]]:
    """The request kinds and the cycle of ten kind indexes every client walks through together."""

    def jpeg(name: str, data: bytes) -> FormPart:
        return ("images", name, "image/jpeg", data)

    def text(field: str, value: str) -> FormPart:
        return (field, None, "text/plain", value.encode())

    def post(path: str, *parts: FormPart) -> bytes:
        return http_request(host, port, path, list(parts))

    fours = [photos[i : i + 4] for i in range(0, len(photos) - 3, 4)]
    zips = [("images", f"batch{i}.zip", "application/zip", zip_of(g)) for i, g in enumerate(fours)]
    pairs = list(zip(photos[::2], photos[1::2], strict=False))
    corrupt = zip_of(fours[0])[: len(zips[0][3]) // 3]  # a zip cut short: no central directory
    kinds = [
        Kind("image", 200, 1, tuple(post("/predict", jpeg(*p)) for p in photos)),
        Kind("zip4", 200, 4, tuple(post("/predict", z) for z in zips)),
        Kind("zip4 which=last", 200, 4, tuple(post("/predict", z, text("which", "last")) for z in zips)),
        Kind("zip4 threshold", 200, 4, tuple(post("/predict", z, text("threshold", "0.3")) for z in zips)),
        Kind("bundle zip", 200, 4, tuple(post("/predict_bundle", z, text("format", "zip")) for z in zips)),
        Kind(
            "bundle csv",
            200,
            2,
            tuple(post("/predict_bundle", jpeg(*a), jpeg(*b), text("format", "csv")) for a, b in pairs),
        ),
        Kind(
            "bad: not an image", 400, 0, (post("/predict", ("images", "notes.txt", "text/plain", b"hi\n")),)
        ),
        Kind(
            "bad: corrupt zip", 400, 0, (post("/predict", ("images", "cut.zip", "application/zip", corrupt)),)
        ),
        Kind("bad: unknown field", 400, 0, (post("/predict", jpeg(*photos[0]), text("colour", "red")),)),
    ]
    index = {k.name: i for i, k in enumerate(kinds)}
    good = ["image", "zip4", "image", "zip4 which=last", "image", "bundle zip", "image", "zip4 threshold"]
    good.append("bundle csv")
    bad = ["bad: not an image", "bad: corrupt zip", "bad: unknown field"]
    # Thirty slots: ten good-and-bad cycles, the bad one taking each of its three forms in turn.
    cycle = [index[name] for b in bad for name in [*good, b]]
    return kinds, cycle


def read_photos(folder: Path, limit: int) -> list[tuple[str, bytes]]:
    paths = sorted(folder.glob("*.jp*g"))[:limit]
    if len(paths) < 8:
        raise SystemExit(f"need at least 8 JPEGs in {folder}, found {len(paths)}")
    return [(p.name, p.read_bytes()) for p in paths]


# --- the load ------------------------------------------------------------------------------------------


@dataclass
class Load:
    """What the clients record: one (done at s, latency s, kind index, status) per request."""

    records: list[tuple[float, float, int, int]]
    failures: list[str]  # the first few unexpected answers, for the report


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    length = None
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length is None:
        raise ConnectionError(f"answer without Content-Length: {status_line!r}")
    return int(status_line.split()[1]), await reader.readexactly(length)


async def closed_loop(
    host: str, port: int, kinds: list[Kind], cycle: list[int], clients: int, seconds: float
) -> Load:
    """`clients` connections, each sending its next request when its answer arrives."""
    load = Load([], [])
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop_at = started + seconds
    slots = itertools.count()  # shared: the mix holds over all clients, not per client
    turns = [itertools.count() for _ in kinds]  # each kind's requests (photos) in turn

    async def client() -> None:
        reader = writer = None
        while loop.time() < stop_at:
            slot = next(slots)
            k = cycle[slot % len(cycle)]
            kind = kinds[k]
            request = kind.requests[next(turns[k]) % len(kind.requests)]
            t = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(request)
                status, body = await asyncio.wait_for(read_answer(reader), TIMEOUT_S)
            except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
                status, body = FAILED, repr(exc).encode()
                if writer is not None:
                    writer.close()
                reader = writer = None
            load.records.append((loop.time() - started, time.perf_counter() - t, k, status))
            if status != kind.expected and len(load.failures) < 20:
                load.failures.append(f"{kind.name}: {status} {body[:300]!r}")
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return load
