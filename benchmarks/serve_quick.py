"""Quick serving benchmark: manylabel over HTTP against the in-process limit, same model and images.

    BENTOML_HOME=... python benchmarks/serve_quick.py --model NAME --images DIR [DIR ...]

For each image folder and each concurrency (closed loop, one image per request):
  * in-process reference: `load_image` + onnxruntime in one process, N threads, no HTTP; both
    1 and all-cores intra-op threads are tried and the faster one is the reference;
  * manylabel: `bentoml serve service.server.service:ManyLabel` started here, driven by a lean asyncio
    HTTP/1.1 client (keep-alive, bodies encoded once) so the client takes little of the CPU.
Prints a Markdown table (images/s, p50, p99, ratio) and writes JSON with --json.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.preprocess import load_image  # noqa: E402
from service.server.runtime import session_options  # noqa: E402
from service.store import load_model  # noqa: E402


def stats(latencies: list[float], elapsed: float) -> dict[str, float]:
    lat = np.array(latencies) * 1000
    return {
        "images_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "requests": len(lat),
    }


# --- in-process reference -------------------------------------------------------------------------


def reference(model_dir: Path, manifest, images: list[bytes], conc: int, seconds: float, intra: int) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(model_dir / manifest.models["best"].file),
        session_options(intra),
        providers=["CPUExecutionProvider"],
    )
    spec, inp = manifest.preprocessing, manifest.preprocessing.input_name
    session.run(None, {inp: load_image(images[0], spec)[None]})
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            t = time.perf_counter()
            session.run(None, {inp: load_image(images[i % len(images)], spec)[None]})
            with lock:
                latencies.append(time.perf_counter() - t)
            i += conc

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(conc)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return stats(latencies, time.perf_counter() - start)


# --- HTTP load ------------------------------------------------------------------------------------


def encode_request(host: str, port: int, name: str, data: bytes) -> bytes:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
        f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def http_load(host: str, port: int, requests: list[bytes], conc: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = offset
        try:
            while loop.time() < stop:
                t = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                if b" 200 " not in status_line:
                    errors.append(f"{status_line!r} {body[:200]!r}")
                else:
                    latencies.append(time.perf_counter() - t)
                i += conc
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(conc)))
    result = stats(latencies, time.perf_counter() - start)
    result["errors"] = len(errors)
    if errors:
        result["first_error"] = errors[0]
    return result


def busy_seconds() -> float:
    """CPU time the whole machine spent busy (all processes), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def measured(server_pid: int, fn, *, server: bool = False) -> dict:
    """Run `fn`; add CPU ms per image (server tree or this process) and other tenants' CPU %."""
    busy, own, srv, wall = (
        busy_seconds(),
        time.process_time(),
        tree_cpu_seconds(server_pid),
        time.perf_counter(),
    )
    result = fn()
    wall = time.perf_counter() - wall
    own, srv = time.process_time() - own, tree_cpu_seconds(server_pid) - srv
    n = max(result["requests"], 1)
    result["cpu_ms_per_image"] = round((srv if server else own) * 1000 / n, 2)
    if server:
        result["client_cpu_ms_per_image"] = round(own * 1000 / n, 2)
    result["foreign_cpu_pct"] = round(max(0.0, busy_seconds() - busy - own - srv) / wall * 100, 1)
    return result


def keep(best: dict[str, dict], kind: str, run: dict) -> None:
    if kind not in best or run["images_per_s"] > best[kind]["images_per_s"]:
        best[kind] = run


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def load_once(port: int, requests: list[bytes], conc: int, seconds: float) -> dict:
    return asyncio.run(http_load("127.0.0.1", port, requests, conc, seconds))


def start_server(model: str, port: int, extra_env: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "MANYLABEL_MODEL": model, "BENTOML_DO_NOT_TRACK": "true", **extra_env}
    bentoml = str(Path(sys.executable).parent / "bentoml")
    proc = subprocess.Popen(
        [bentoml, "serve", "service.server.service:ManyLabel", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become ready")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model name in the BentoML store")
    ap.add_argument("--images", nargs="+", type=Path, required=True, help="folders of JPEGs")
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--limit", type=int, default=100, help="images per folder")
    ap.add_argument("--env", nargs="*", default=[], help="MANYLABEL_X=Y settings for the server")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="alternate runs per cell; the best of each is kept")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    stored = load_model(args.model)
    cores = os.cpu_count() or 1
    sets = {folder.name: sorted(folder.glob("*.jp*g"))[: args.limit] for folder in args.images}
    data = {name: [p.read_bytes() for p in paths] for name, paths in sets.items()}
    port = free_port()
    proc = start_server(args.model, port, dict(kv.split("=", 1) for kv in args.env))
    rows: list[dict] = []
    try:
        for name, images in data.items():
            requests = [encode_request("127.0.0.1", port, f"{i}.jpg", b) for i, b in enumerate(images)]
            asyncio.run(http_load("127.0.0.1", port, requests, 8, 3.0))  # warm-up
            for conc in args.concurrency:
                # Reference and service alternate, best of --repeat each: other tenants of the
                # machine then hurt both alike, and `foreign_cpu_pct` shows when they were there.
                best: dict[str, dict] = {}
                for _ in range(args.repeat):
                    if not args.skip_reference:
                        for intra in sorted({1, cores}):
                            run = measured(
                                proc.pid,
                                functools.partial(
                                    reference, stored.path, stored.manifest, images, conc, args.seconds, intra
                                ),
                            )
                            keep(best, "in-process", {**run, "intra": intra})
                    run = measured(
                        proc.pid,
                        functools.partial(load_once, port, requests, conc, args.seconds),
                        server=True,
                    )
                    keep(best, "manylabel", run)
                for kind, row in best.items():
                    rows.append({"set": name, "concurrency": conc, "kind": kind, **row})
                    print(rows[-1], flush=True)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    batches = [ln for ln in metrics.splitlines() if ln.startswith("manylabel_batch_size_")]
    print("\n".join(batches[-4:]))
    print(f"\n{platform.processor() or platform.machine()}, {cores} cores\n")
    print(
        "| images | conc | in-process img/s | p50 / p99 ms | CPU ms/img | manylabel img/s | p50 / p99 ms "
        "| CPU ms/img | ratio | other tenants' CPU % |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in data:
        for conc in args.concurrency:
            ref = next(
                (
                    r
                    for r in rows
                    if r["set"] == name and r["concurrency"] == conc and r["kind"] == "in-process"
                ),
                None,
            )
            ours = next(
                r for r in rows if r["set"] == name and r["concurrency"] == conc and r["kind"] == "manylabel"
            )
            ref_txt = (
                f"{ref['images_per_s']} | {ref['p50_ms']} / {ref['p99_ms']} | {ref['cpu_ms_per_image']}"
                if ref
                else "- | - | -"
            )
            ratio = f"{ours['images_per_s'] / ref['images_per_s']:.2f}" if ref else "-"
            print(
                f"| {name} | {conc} | {ref_txt} | {ours['images_per_s']} | "
                f"{ours['p50_ms']} / {ours['p99_ms']} | {ours['cpu_ms_per_image']} | {ratio} | "
                f"{ref['foreign_cpu_pct'] if ref else '-'} / {ours['foreign_cpu_pct']} |"
            )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cores": cores}, indent=1))


if __name__ == "__main__":
    main()
