"""Hostile requests against a real `bentoml serve`: status and the server's peak memory, per case.

    python benchmarks/hostile.py [--repo DIR] [--service IMPORT] [--out benchmarks/results/hostile.json]

`--repo` serves another checkout (e.g. an older commit in a `git worktree`) with this machine's
venv, to measure before and after; `--service` is its import path (older versions:
`service.service:ManyLabel`). The cases are those of `tests/service/test_hostile.py`, at the
service's default limits, on the tiny test model: what matters is what one request costs the
replica, not the model. Peak RSS is the whole process tree's, sampled every 10 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "service")]

from servekit import image_bytes  # noqa: E402
from support.bentoserve import free_port, stop, wait_ready  # noqa: E402
from support.tinymodel import SAVE_SCRIPT  # noqa: E402
from test_hostile import PeakRSS, corrupt_first_member, zip_of  # noqa: E402

MiB = 1 << 20


def cases() -> dict[str, dict]:
    """name -> httpx.post keyword arguments (path included)."""
    deep = io.BytesIO()
    Image.new("I;16", (6000, 6000)).save(deep, format="PNG")
    noise = []
    rng = np.random.default_rng(0)
    for i in range(12):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (800, 800, 3), dtype=np.uint8)).save(buffer, "PNG")
        noise.append(("images", (f"noise{i}.png", buffer.getvalue(), "image/png")))
    locked = bytearray(zip_of({"secret.jpg": image_bytes(2)}, compression=zipfile.ZIP_STORED))
    for signature, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        locked[locked.index(signature) + at] |= 0x1
    corrupt = corrupt_first_member(zip_of({"photo.bmp": bytes(200_000)}), method=zipfile.ZIP_DEFLATED)
    one = [("images", ("a.jpg", image_bytes(3), "image/jpeg"))]
    deep_json = '{"a": ' * 1000 + "0" + "}" * 1000

    def upload(name: str, data: bytes, kind: str = "application/zip") -> list:
        return [("images", (name, data, kind))]

    return {
        "zip bomb: 0.3 MB zip declaring 288 MiB": {
            "files": upload("bomb.zip", zip_of({f"b{i}.bmp": bytes(48 * MiB) for i in range(6)}))
        },
        "zip of 50,000 members": {
            "files": upload("many.zip", zip_of({f"n/{i}.txt": b"" for i in range(50_000)}, compression=0))
        },
        "16-bit PNG, 36 Mpx of zeros": {"files": upload("deep.png", deep.getvalue(), "image/png")},
        "zip bundle, 12 x 1.9 MB images, threshold 0": {
            "files": noise,
            "data": {"format": "zip", "threshold": "0"},
            "path": "/predict_bundle",
        },
        "3,000 form fields": {"files": one + [(f"f{i}", (None, b"x" * 64)) for i in range(3000)]},
        "encrypted zip member": {"files": upload("locked.zip", bytes(locked))},
        "corrupt deflate member": {"files": upload("broken.zip", corrupt)},
        "thresholds JSON 1000 deep": {"files": one, "data": {"thresholds": deep_json}},
    }


def serve(repo: Path, service: str, root: Path) -> tuple[subprocess.Popen, str, dict]:
    env = {**os.environ, "BENTOML_HOME": str(root / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    env.update({"MANYLABEL_MODEL": "tiny-test", "MANYLABEL_PROVIDER": "cpu", "PYTHONPATH": str(repo)})
    # The served repository's own test model builder: its manifest is the one that code reads.
    build = f"import sys; sys.path[:0] = {[str(repo / 'tests'), str(repo / 'tests' / 'service')]!r}; "
    build += "from pathlib import Path; from servekit import build_model; "
    build += f"build_model(Path({str(root / 'model')!r}))"
    subprocess.run([sys.executable, "-c", build], env=env, check=True, cwd=repo)
    subprocess.run([sys.executable, "-c", SAVE_SCRIPT, str(root / "model")], env=env, check=True, cwd=repo)
    port = free_port()
    log = root / "server.log"
    bentoml = str(Path(sys.executable).parent / "bentoml")
    with open(log, "ab") as out:
        cmd = [bentoml, "serve", service, "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, log)
    return proc, url, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--service", default="service.server.service:ManyLabel")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "hostile.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, _ = serve(args.repo.resolve(), args.service, Path(tmp))
        try:
            for name, request in cases().items():
                path = request.pop("path", "/predict")
                with PeakRSS(proc.pid) as rss, httpx.Client(timeout=300) as client:
                    started = time.perf_counter()
                    try:
                        r = client.post(f"{url}{path}", **request)
                        status, body = r.status_code, r.text[:120]
                    except httpx.HTTPError as exc:  # the replica died or hung up
                        status, body = f"no answer ({type(exc).__name__})", ""
                    seconds = time.perf_counter() - started
                alive = proc.poll() is None
                rows.append(
                    {"case": name, "status": status, "peak_rss_growth_mib": round(rss.growth_mib, 1),
                     "seconds": round(seconds, 2), "replica_alive": alive, "body": body}
                )
                print(f"{name:48} {status!s:>5}  +{rss.growth_mib:7.1f} MiB  {seconds:6.2f} s  alive={alive}")
                if not alive:
                    break
        finally:
            stop(proc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"repo": str(args.repo), "service": args.service, "cases": rows}
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
