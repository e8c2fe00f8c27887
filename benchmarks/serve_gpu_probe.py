"""What the GPU run measures besides images/s: requests of several images, the batch sizes the
server formed (its Prometheus histogram) and GPU utilisation (nvidia-smi). Part of benchmarks/serve.py.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx


def encode_images(host: str, port: int, images: list[tuple[str, bytes]]) -> bytes:
    """One multipart POST /predict with several JPEGs in field `images` (encode_request: one)."""
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
            + data
            + b"\r\n"
            for name, data in images
        )
        + f"--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
        f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def batch_histogram(url: str) -> dict[str, float]:
    """manylabel_batch_size of the best model from /metrics: cumulative buckets, sum and count."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("manylabel_batch_size") and 'model="best"' in line:
            name, value = line.rsplit(" ", 1)
            le = name.split('le="', 1)[1].split('"', 1)[0] if 'le="' in name else None
            out[f"le={le}" if le else name.split("{", 1)[0].rsplit("_", 1)[1]] = float(value)
    return out


def batch_delta(before: dict[str, float], after: dict[str, float]) -> dict:
    """The onnxruntime calls of one cell: how many, mean images per call, calls per bucket."""
    calls = after.get("count", 0.0) - before.get("count", 0.0)
    images = after.get("sum", 0.0) - before.get("sum", 0.0)
    buckets, previous = {}, 0.0
    for key in sorted((k for k in after if k.startswith("le=")), key=lambda k: float(k[3:])):
        cumulative = after[key] - before.get(key, 0.0)
        if cumulative - previous > 0:
            buckets[key[3:]] = int(cumulative - previous)
        previous = cumulative
    return {"calls": int(calls), "mean": round(images / calls, 1) if calls else None, "calls_by_le": buckets}


class GpuSampler:
    """`nvidia-smi --query-gpu=... -lms 500` in the background; utilisation and memory per window."""

    def __init__(self, path: Path) -> None:
        self.path, self.proc = path, None
        if shutil.which("nvidia-smi"):
            query = "--query-gpu=timestamp,utilization.gpu,memory.used"
            cmd = ["nvidia-smi", query, "--format=csv,noheader,nounits", "-lms", "500"]
            self.proc = subprocess.Popen(cmd, stdout=path.open("w"), stderr=subprocess.DEVNULL)

    def window(self, t0: float, t1: float) -> dict | None:
        """Mean and max utilisation %, max memory MiB, between two time.time() stamps."""
        if self.proc is None:
            return None
        rows = []
        for line in self.path.read_text().splitlines():
            parts = [x.strip() for x in line.split(",")]
            try:
                stamp = time.mktime(time.strptime(parts[0].split(".")[0], "%Y/%m/%d %H:%M:%S"))
                rows.append((stamp, float(parts[1]), float(parts[2])))
            except (ValueError, IndexError):
                continue
        inside = [r for r in rows if t0 - 0.5 <= r[0] <= t1 + 0.5]
        if not inside:
            return None
        util = [r[1] for r in inside]
        return {
            "util_mean": round(sum(util) / len(util), 1),
            "util_max": max(util),
            "mem_mib": max(r[2] for r in inside),
        }

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
