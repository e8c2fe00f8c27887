"""Helpers for the studio tests: images, zips and CSVs made here, a dataset store in a folder, and a
real `manylabel studio` that the tests start, stop and restart."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from support.bentoserve import free_port, stop, wait_ready

from service.server.http.uploads import InputFile
from service.studio.datasets import DatasetStore
from service.studio.db import Database

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "training" / "sample"


def jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A small JPEG whose bytes depend on `seed`."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG")
    return out.getvalue()


def files(**named: bytes) -> list[InputFile]:
    return [InputFile(name=name.replace("__", "/"), data=data) for name, data in named.items()]


def zip_of(folder: Path, arcdir: str = "images") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"{arcdir}/{path.name}")
    return out.getvalue()


def new_store(root: Path) -> DatasetStore:
    return DatasetStore(Database(root / "studio.db"), root / "images", max_pixels=4_000_000)


def csv_bytes(*rows: str) -> tuple[str, bytes]:
    return ("labels.csv", ("\n".join(rows) + "\n").encode())


SERVED = "served-before"  # the tiny model in the store before the studio starts


@dataclass
class StudioServer:
    root: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "studio.log"

    def start(self) -> None:
        """`manylabel studio` (through `python -m service`, as the console script does)."""
        cmd = [sys.executable, "-m", "service", "studio", "--port", str(self.port), "--data", str(self.data)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_ready(self.url, self.proc, self.log, timeout=120)

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None

    def processes(self) -> dict[int, str]:
        """pid -> command line of the server and every process under it (the training child too)."""
        assert self.proc is not None
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        tree, grew = {self.proc.pid}, True
        while grew:
            found = {pid for pid, parent in parents.items() if parent in tree} - tree
            tree |= found
            grew = bool(found)
        commands = {}
        for pid in tree:
            try:
                commands[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
        return commands


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}


def colour_images(
    n: int = 48, *, seed: int = 0, size: int = 64
) -> tuple[dict[str, bytes], dict[str, list[str]]]:
    """`n` JPEGs a model learns in seconds: grey noise with a square of each colour the image is
    labelled with (red, green, blue, each in its own quadrant). -> ({name: bytes}, {name: labels})."""
    rng = np.random.default_rng(seed)
    images, labels = {}, {}
    half = size // 2
    for i in range(n):
        present = [c for c in COLOURS if rng.random() < 0.5] or [list(COLOURS)[i % len(COLOURS)]]
        pixels = rng.integers(110, 150, (size, size, 3), dtype=np.uint8)
        for colour, quadrant in zip(present, rng.permutation(4), strict=False):
            y, x = divmod(int(quadrant), 2)
            pixels[y * half + 3 : (y + 1) * half - 3, x * half + 3 : (x + 1) * half - 3] = COLOURS[colour]
        out = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=90)
        name = f"img-{i:03d}.jpg"
        images[name] = out.getvalue()
        labels[name] = sorted(present)
    return images, labels


SHAPES = ("red", "green", "blue")  # a red disc, a green triangle, a blue square


def shape_image(seed: int, labels: list[str], size: int = 96) -> bytes:
    """A JPEG on a plain background with a shape for each label, each in its own quadrant: features
    separate them cleanly, so a small head learns them in seconds and a flipped label stands out."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    base = rng.integers(100, 180, 3)
    pixels = np.clip(base + rng.integers(-6, 7, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    half = size // 2
    for label, cell in zip(labels, rng.permutation(4), strict=False):
        side = int(rng.integers(28, half - 8))
        x = half * int(cell % 2) + int(rng.integers(0, half - side))
        y = half * int(cell // 2) + int(rng.integers(0, half - side))
        box = [x, y, x + side, y + side]
        if label == "red":
            draw.ellipse(box, fill=(220, 30, 30))
        elif label == "green":
            draw.polygon([(x, y + side), (x + side, y + side), (x + side // 2, y)], fill=(30, 200, 40))
        else:
            draw.rectangle(box, fill=(30, 60, 230))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def shape_images(n: int, *, seed: int = 0, prefix: str = "im") -> dict[str, tuple[bytes, list[str]]]:
    """`n` shape images with their true labels (each shape with probability 0.45): name -> (JPEG, labels)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        labels = [s for s in SHAPES if rng.random() < 0.45]
        out[f"{prefix}{i:03d}.jpg"] = (shape_image(seed * 100_003 + i, labels), labels)
    return out


def refused(response: Any, status: int, field: str | None) -> str:
    """Assert the one error body with this status and field; -> its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) <= {"error", "field", "file"} and body["field"] == field, body
    return body["error"]


def wait_job(client: Any, job: int, limit_s: float = 300.0) -> dict:
    """Poll GET /jobs/{job} until the job has ended; -> its view."""
    deadline = time.monotonic() + limit_s
    while True:
        view = client.get(f"/jobs/{job}").json()
        if view["state"] in ("done", "failed", "cancelled"):
            return view
        assert time.monotonic() < deadline, f"job {job} did not end within {limit_s} s: {view}"
        time.sleep(0.5)
