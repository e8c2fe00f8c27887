"""Helpers for the studio tests: images, zips and CSVs made here, a dataset store in a folder, and a
real `manylabel studio` that the tests start, stop and restart."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

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
