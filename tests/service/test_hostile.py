"""Hostile requests against a real `bentoml serve` at the default limits, with the server's memory watched.

Each case asserts the status, the one error body (`{"error", "field", "file"?}`), that the replica is
still ready afterwards, and that the resident memory of the server's whole process tree (sampled
every 10 ms while the request runs) grew less than a stated bound. The model is the tiny one of
`servekit.py`; the limits are the shipped defaults (256 MiB body, 256 MiB unzipped, 1 GiB in flight,
64 Mpx), except a 2 s body timeout so the slow-client case is quick.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import threading
import time
import zipfile
from collections.abc import Iterator

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image
from servekit import MODEL_NAME, Server, image_bytes, serve_tiny_model

MiB = 1 << 20
ENV = {"MANYLABEL_MODEL": MODEL_NAME, "MANYLABEL_PROVIDER": "cpu", "MANYLABEL_BODY_TIMEOUT_S": "2"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve_tiny_model(tmp_path_factory.mktemp("hostile"), ENV) as server:
        yield server


class PeakRSS:
    """Peak resident memory of a process and its children while the `with` block runs."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = self.before = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        total = 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):  # a worker that just exited
                total += proc.memory_info().rss
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.before) / MiB


def post(server: Server, *, files=None, data=None, content=None, headers=None, path="/predict") -> tuple:
    assert server.proc is not None
    with PeakRSS(server.proc.pid) as rss, httpx.Client(base_url=server.url, timeout=120) as client:
        r = client.post(path, files=files, data=data, content=content, headers=headers)
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200, "the replica must stay ready"
    return r, rss


def refused(r: httpx.Response, status: int, field: str | None, *words: str) -> dict:
    assert r.status_code == status, r.text[:500]
    body = r.json()
    assert set(body) <= {"error", "field", "file"} and body["field"] == field, body
    for word in words:
        assert word in body["error"], body
    assert "Traceback" not in r.text
    return body


def zip_of(members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def corrupt_first_member(data: bytes, *, method: int) -> bytes:
    """Flip bytes in the middle of the first member's compressed stream (headers stay intact)."""
    info = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
    assert info.compress_type == method
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    middle = start + info.compress_size // 2
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 16]) + data[middle + 16 :]


# --- memory ------------------------------------------------------------------------------------------


def test_a_zip_bomb_is_refused_before_it_is_unpacked(hostile: Server) -> None:
    zeros = bytes(48 * MiB)  # deflates ~1000:1: six of them are ~0.3 MB sent, 288 MiB declared
    bomb = zip_of({f"bomb{i}.bmp": zeros for i in range(6)})
    assert len(bomb) < 2 * MiB
    r, rss = post(hostile, files=[("images", ("bomb.zip", bomb, "application/zip"))])
    refused(r, 413, "images", "'bomb.zip'", "unpacks to more than")
    assert rss.growth_mib < 64, f"the server grew {rss.growth_mib:.0f} MiB for a refused zip bomb"


def test_a_zip_of_many_members_is_refused_from_its_end_record(hostile: Server) -> None:
    many = zip_of({f"notes/{i}.txt": b"" for i in range(50_000)}, compression=zipfile.ZIP_STORED)
    r, rss = post(hostile, files=[("images", ("many.zip", many, "application/zip"))])
    refused(r, 413, "images", "50,000 members", "'many.zip'")
    assert rss.growth_mib < 64, f"the server grew {rss.growth_mib:.0f} MiB for a refused 50k-member zip"


def test_a_16_bit_image_of_36_mpx_decodes_within_a_bounded_memory(hostile: Server) -> None:
    buffer = io.BytesIO()
    Image.new("I;16", (6000, 6000)).save(buffer, format="PNG")  # 72 MB of pixels, ~100 kB of file
    r, rss = post(hostile, files=[("images", ("deep.png", buffer.getvalue(), "image/png"))])
    assert r.status_code == 200, r.text
    assert rss.growth_mib < 400, f"decoding one 36-Mpx 16-bit PNG grew the server {rss.growth_mib:.0f} MiB"


def test_a_zip_bundle_of_every_label_holds_each_image_once(hostile: Server) -> None:
    rng = np.random.default_rng(0)
    images = []
    for i in range(12):  # noise does not compress: ~2 MB each, 24 MB in all
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (800, 800, 3), dtype=np.uint8)).save(buffer, "PNG")
        images.append(("images", (f"noise{i}.png", buffer.getvalue(), "image/png")))
    sent = sum(len(f[1][1]) for f in images) / MiB
    r, rss = post(hostile, files=images, data={"format": "zip", "threshold": "0"}, path="/predict_bundle")
    assert r.status_code == 200, r.text
    assert len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) >= 12
    assert rss.growth_mib < 4 * sent + 64, f"{sent:.0f} MiB sent, the server grew {rss.growth_mib:.0f} MiB"


def test_thousands_of_form_fields_are_refused(hostile: Server) -> None:
    fields = [(f"f{i}", (None, b"x" * 64)) for i in range(3000)]
    r, _ = post(hostile, files=[("images", ("a.jpg", image_bytes(1), "image/jpeg")), *fields])
    refused(r, 413, None, "more than 1008 parts")


# --- bad input is a 4xx naming the file -----------------------------------------------------------------


def test_an_encrypted_zip_member_is_a_400_naming_it(hostile: Server) -> None:
    data = bytearray(zip_of({"secret.jpg": image_bytes(2)}, compression=zipfile.ZIP_STORED))
    # Set the "encrypted" flag bit in the local header and the central directory entry, as a
    # password-protecting tool does (zipfile never writes it); zipfile then asks for a password.
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.index(signature) + flags_at] |= 0x1
    r, _ = post(hostile, files=[("images", ("locked.zip", bytes(data), "application/zip"))])
    body = refused(r, 400, "images", "'secret.jpg'", "encrypted")
    assert body["file"] == "locked.zip/secret.jpg"


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA, zipfile.ZIP_BZIP2])
def test_a_corrupt_compressed_member_is_a_400_naming_it(hostile: Server, method: int) -> None:
    data = corrupt_first_member(zip_of({"photo.bmp": bytes(200_000)}, compression=method), method=method)
    r, _ = post(hostile, files=[("images", ("broken.zip", data, "application/zip"))])
    body = refused(r, 400, "images", "'photo.bmp'", "cannot be read")
    assert body["file"] == "broken.zip/photo.bmp"


def test_corrupt_exif_decodes_without_the_orientation(hostile: Server) -> None:
    # One IFD: orientation 6 (rotate), and an interoperability IFD pointer of type BYTE. Rotating
    # rewrites the EXIF, and Pillow then raises struct.error inside exif_transpose.
    entries = struct.pack("<HHI", 0x0112, 3, 1) + struct.pack("<HH", 6, 0)
    entries += struct.pack("<HHI", 0xA005, 1, 1) + b"\0\0\0\0"
    tiff = b"II*\x00" + struct.pack("<IH", 8, 2) + entries + struct.pack("<I", 0) + b"\x01" * 64
    payload = b"Exif\x00\x00" + tiff
    jpeg = image_bytes(6)
    broken = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]
    r, _ = post(hostile, files=[("images", ("odd-exif.jpg", broken, "image/jpeg"))])
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["filename"] == "odd-exif.jpg"


@pytest.mark.parametrize("field", ["thresholds", "threshold"])
def test_json_nested_a_thousand_deep_is_a_400(hostile: Server, field: str) -> None:
    deep = '{"a": ' * 1000 + "0" + "}" * 1000
    r, _ = post(hostile, files=[("images", ("a.jpg", image_bytes(3), "image/jpeg"))], data={field: deep})
    refused(r, 400, field)


@pytest.mark.parametrize(
    "disposition",
    [
        b'Content-Disposition: form-data; name="images"; filename="a.jpg"\r\n'
        b'Content-Disposition: form-data; name="which"',
        b'Content-Disposition: form-data; name="images"; name="which"; filename="a.jpg"',
    ],
    ids=["two-headers", "two-names"],
)
def test_an_ambiguous_part_is_a_400(hostile: Server, disposition: bytes) -> None:
    part = disposition + b"\r\nContent-Type: image/jpeg\r\n\r\n" + image_bytes(4)
    body = b"--b\r\n" + part + b"\r\n--b--\r\n"
    r, _ = post(hostile, content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    refused(r, 400, None, "malformed multipart body")


def test_a_damaged_custom_thresholds_file_is_the_servers_fault(hostile: Server) -> None:
    (manifest,) = (hostile.home / "models" / MODEL_NAME).rglob("manifest.json")  # the one stored version
    damaged = manifest.parent / "custom_thresholds.json"
    damaged.write_text("{not json")
    try:
        r, _ = post(hostile, files=[("images", ("a.jpg", image_bytes(5), "image/jpeg"))])
        refused(r, 503, "custom_thresholds", "not readable JSON", "--reset")
    finally:
        damaged.unlink()
    r, _ = post(hostile, files=[("images", ("a.jpg", image_bytes(5), "image/jpeg"))])
    assert r.status_code == 200, r.text


def test_a_truncated_jpeg_alone_is_a_400_and_the_next_one_is_served(hostile: Server) -> None:
    # At the CPU defaults a request of one JPEG, alone in the worker, is decoded on the event loop
    # (predictor.INLINE_MAX_BYTES); a failure there must answer like one on a decode thread.
    whole = image_bytes(8, size=(400, 300))
    r, _ = post(hostile, files=[("images", ("cut.jpg", whole[: len(whole) // 2], "image/jpeg"))])
    assert refused(r, 400, "images", "'cut.jpg'", "truncated")["file"] == "cut.jpg"
    r, _ = post(hostile, files=[("images", ("whole.jpg", whole, "image/jpeg"))])
    assert r.status_code == 200 and r.json()["images"][0]["filename"] == "whole.jpg", r.text


def test_a_client_that_stalls_mid_body_gets_408(hostile: Server) -> None:
    host, port = hostile.url.removeprefix("http://").split(":")
    head = (
        "POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 100000\r\n\r\n--b\r\n"
    )
    started = time.monotonic()
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        while b"}" not in answer and (chunk := sock.recv(65536)):  # headers, then the JSON body
            answer += chunk
    answer = answer.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert "stalled" in answer and json.loads(answer.split("\r\n\r\n", 1)[1])["field"] is None
    assert time.monotonic() - started < 20
    assert httpx.get(f"{hostile.url}/readyz", timeout=10).status_code == 200

