"""Serving benchmark: manylabel over HTTP against the in-process limit and against peer servers.

    BENTOML_HOME=... python benchmarks/serve.py --model NAME --images DIR [DIR ...] --out benchmarks/results

Every target serves the same fused ONNX model (best.onnx of a stored manylabel model) with the same
preprocessing (`service.preprocess.load_image`) and onnxruntime options (intra-op threads = cores,
spinning off), and answers the same request: multipart POST /predict, one JPEG in field `images`.
  * in-process: decode + onnxruntime in one Python process, no HTTP (its own process, so its peak
    RSS is its own): `conc` images in flight served by min(conc, cores) threads, batch 1;
  * manylabel: `bentoml serve service.server.service:ManyLabel` with its defaults (adaptive batching);
  * peers (benchmarks/peers/, run with --peers-python): PyTriton (Triton's dynamic batcher),
    LitServe (`max_batch_size` + `batch_timeout`), plain FastAPI (no batching).
in-process and manylabel also run the model's int8 variant (best.int8.onnx, `--precisions`; rows
marked int8): manylabel with MANYLABEL_PRECISION=int8, the fp32 rows with MANYLABEL_PRECISION=fp32.
The peers serve best.onnx (fp32) only.
The images are resized copies (longest side 256 and 1000 px, JPEG q90) of the photos in --images,
written to a temporary folder. Load: serve_quick's lean asyncio HTTP/1.1 client, closed loop
(each of `conc` connections sends its next request when the previous answer arrives), for
--seconds per cell after a 1 s warm-up. All targets run --rounds times (later rounds in the
reverse order, servers restarted) and each cell keeps its best round: on a shared machine, noise
only ever slows a run down. A target that fails keeps its exact error in the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from serve_quick import encode_request, free_port, http_load, stats, tree_cpu_seconds  # noqa: E402

PEERS = {
    "pytriton": HERE / "peers" / "pytriton_server.py",
    "litserve": HERE / "peers" / "litserve_server.py",
    "fastapi": HERE / "peers" / "fastapi_server.py",
}
TARGETS = ("in-process", "manylabel", *PEERS)
PRECISIONS = ("fp32", "int8")
INT8_TARGETS = ("in-process", "manylabel")  # the peers load best.onnx, the fp32 graph
TITLES = {
    "in-process": "in-process",
    "manylabel": "manylabel",
    "pytriton": "PyTriton",
    "litserve": "LitServe",
    "fastapi": "FastAPI",
}
WARM_UP_S = 1.0


def result_key(target: str, precision: str) -> str:
    """serve.json's key of a target's results: `manylabel` (fp32, as before int8), `manylabel-int8`."""
    return target if precision == "fp32" else f"{target}-{precision}"


# --- machine and images ---------------------------------------------------------------------------


def machine() -> dict:
    """Cores, CPU model (/proc/cpuinfo), GPU (nvidia-smi, if any), load average, date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "none"
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        gpu = out.stdout.strip().replace("\n", "; ") or "none"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "gpu": gpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": sys.version.split()[0],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def machine_line(m: dict) -> str:
    busy = f", {m['busy_cores_at_start']:.2f} cores busy" if "busy_cores_at_start" in m else ""
    return (
        f"{m['date']}: {m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB, GPU: {m['gpu']}; "
        f"load average at start {m['load_average_at_start'][0]}{busy}"
    )


def make_image_sets(folders: Iterable[Path], sizes: Iterable[int], limit: int, out: Path) -> dict[str, Path]:
    """`limit` photos spread over `folders`, resized to each longest side in `sizes` under `out`."""
    from PIL import Image, ImageOps

    folders = list(folders)
    per = -(-limit // len(folders))
    photos = [p for f in folders for p in sorted(f.glob("*.jp*g"))[:per]][:limit]
    if not photos:
        raise SystemExit(f"no JPEGs in {[str(f) for f in folders]}")
    sets = {}
    for size in sizes:
        folder = out / f"{size}px"
        folder.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(photos):
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img).convert("RGB")
                scale = size / max(img.size)
                img = img.resize(
                    (round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC
                )
                img.save(folder / f"{i:04d}.jpg", quality=90)
        sets[f"{size}px"] = folder
    return sets


# --- servers --------------------------------------------------------------------------------------


def server_command(target: str, model: str, model_dir: Path, port: int, peers_python: str) -> list[str]:
    if target == "manylabel":
        bentoml = str(Path(sys.executable).parent / "bentoml")
        service = "service.server.service:ManyLabel"
        return [bentoml, "serve", service, "--host", "127.0.0.1", "--port", str(port)]
    return [peers_python, str(PEERS[target]), "--model-dir", str(model_dir), "--port", str(port)]


def start(cmd: list[str], env: dict[str, str], log: Path, probe: bytes, port: int, timeout: float = 180):
    """Start a server in its own session; return it once a real /predict answers 200."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    files = {"images": ("probe.jpg", probe, "image/jpeg")}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before answering")
        try:
            response = httpx.post(f"http://127.0.0.1:{port}/predict", files=files, timeout=30)
            if response.status_code == 200:
                return proc
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"no 200 from /predict within {timeout:.0f} s (last: {last})")


def process_tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def peak_rss_mib(pid: int) -> float:
    """Sum over the process tree of each process's peak RSS (VmHWM); shared pages count in each."""
    total_kib = 0
    for proc in process_tree(pid):
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return round(total_kib / 1024, 1)


def stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM every process of the server's tree (by pid), SIGKILL what is left after `grace`."""
    import psutil

    tree = process_tree(proc.pid)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout=10)


def tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def machine_busy_seconds() -> float:
    """CPU seconds spent by everything on the machine since boot (all cores; /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def busy_cores(seconds: float = 2.0) -> float:
    """How many cores the whole machine keeps busy, averaged over `seconds`."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - before) / seconds


def wait_quiet(max_wait_s: float, threshold: float = 0.25) -> float:
    """Wait (up to `max_wait_s`) until other work keeps fewer than `threshold` cores busy."""
    deadline = time.monotonic() + max_wait_s
    while (busy := busy_cores()) >= threshold and time.monotonic() < deadline:
        print(f"waiting for a quiet machine: {busy:.2f} cores busy", file=sys.stderr, flush=True)
        time.sleep(8)
    return round(busy, 2)


def bench_server(
    target: str, args, sets: dict[str, Path], model_dir: Path, workdir: Path, precision: str = "fp32"
) -> dict:
    port = free_port()
    env = {**os.environ, "MANYLABEL_MODEL": args.model, "BENTOML_DO_NOT_TRACK": "true"}
    env["MANYLABEL_PRECISION"] = precision  # pinned: auto would serve int8 in the fp32 rows
    log = workdir / f"{result_key(target, precision)}.log"
    cmd = server_command(target, args.model, model_dir, port, args.peers_python)
    data = {name: [p.read_bytes() for p in sorted(folder.glob("*.jpg"))] for name, folder in sets.items()}
    first = next(iter(data.values()))[0]
    started = time.perf_counter()
    try:
        proc = start(cmd, env, log, first, port)
    except Exception as exc:  # recorded, not raised: a peer that cannot run here is a result
        return {"target": target, "error": f"{exc}\n{tail(log)}".strip(), "command": cmd}
    start_s = round(time.perf_counter() - started, 1)
    cells = []
    try:
        for name, images in data.items():
            requests = [encode_request("127.0.0.1", port, f"{i}.jpg", b) for i, b in enumerate(images)]
            asyncio.run(http_load("127.0.0.1", port, requests, 8, WARM_UP_S))
            for conc in args.concurrency:
                server_cpu, client_cpu = tree_cpu_seconds(proc.pid), time.process_time()
                busy, t0 = machine_busy_seconds(), time.perf_counter()
                try:
                    result = asyncio.run(http_load("127.0.0.1", port, requests, conc, args.seconds))
                except OSError as exc:
                    result = {"images_per_s": 0.0, "requests": 0, "errors": 1, "first_error": repr(exc)}
                n = max(result["requests"], 1)
                result["cpu_ms_per_image"] = round((tree_cpu_seconds(proc.pid) - server_cpu) * 1000 / n, 2)
                result["client_cpu_ms_per_image"] = round((time.process_time() - client_cpu) * 1000 / n, 2)
                ours = tree_cpu_seconds(proc.pid) - server_cpu + time.process_time() - client_cpu
                other = machine_busy_seconds() - busy - ours
                result["other_cores"] = round(max(other, 0.0) / (time.perf_counter() - t0), 2)
                cells.append({"set": name, "concurrency": conc, **result})
                print(target, cells[-1], flush=True)
        peak = peak_rss_mib(proc.pid)
    finally:
        stopping = time.perf_counter()
        stop(proc)
    stop_s = round(time.perf_counter() - stopping, 1)
    out = {"target": target, "start_s": start_s, "stop_s": stop_s, "peak_rss_mib": peak, "cells": cells}
    out["command"] = cmd
    if any(c.get("errors") for c in cells):
        out["log_tail"] = tail(log)
    return out


# --- the in-process reference, in a process of its own --------------------------------------------


def in_process(
    model_dir: Path,
    manifest,
    images: list[bytes],
    conc: int,
    seconds: float,
    workers: int,
    intra: int,
    precision: str = "fp32",
) -> dict:
    """Closed loop of `conc` images in flight, served by `workers` threads (decode + batch-1 run).

    Unlike a thread per client, the thread count stays at most the core count however many
    images are in flight, so concurrency 32 is not slowed by 32 threads fighting over 2 cores;
    latency is from an image's submission to its scores, queueing included, as over HTTP.
    """
    import queue
    import threading

    import onnxruntime as ort

    from service.preprocess import load_image
    from service.server.runtime import session_options

    spec, inp = manifest.preprocessing, manifest.preprocessing.input_name
    session = ort.InferenceSession(
        str(model_dir / manifest.models["best"].file_for(precision)),
        session_options(intra),
        providers=["CPUExecutionProvider"],
    )
    session.run(None, {inp: load_image(images[0], spec)[None]})
    todo: queue.SimpleQueue = queue.SimpleQueue()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    def work() -> None:
        while (job := todo.get()) is not None:
            i, submitted = job
            session.run(None, {inp: load_image(images[i % len(images)], spec)[None]})
            now = time.perf_counter()
            latencies.append(now - submitted)  # list.append is atomic under the GIL
            todo.put((i + conc, now) if now < stop_at else None)

    started, cpu, busy = time.perf_counter(), time.process_time(), machine_busy_seconds()
    for i in range(conc):
        todo.put((i, started))
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - started
    own = time.process_time() - cpu
    other = max(machine_busy_seconds() - busy - own, 0.0)
    result = stats(latencies, elapsed)
    result["cpu_ms_per_image"] = round(own * 1000 / max(len(latencies), 1), 2)
    result["other_cores"] = round(other / elapsed, 2)  # CPU used meanwhile by other processes
    return result


def reference_worker(
    model_dir: Path, sets: list[Path], concurrency: list[int], seconds: float, precision: str = "fp32"
) -> dict:
    """Runs inside its own process: every (set, concurrency) cell, then this process's peak RSS."""
    from service.manifest import Manifest

    manifest = Manifest.read(model_dir, verify=False)
    cores = os.cpu_count() or 1
    cells = []
    for folder in sets:
        images = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
        for conc in concurrency:
            # Measured here: one thread with all cores for intra-op at concurrency 1; above it, one
            # thread per core with intra-op 1 (1.3-2x the other combinations at 8 and 32 in flight).
            workers = min(conc, cores)
            intra = cores if workers == 1 else 1
            result = in_process(model_dir, manifest, images, conc, seconds, workers, intra, precision)
            cells.append(
                {
                    "set": folder.name,
                    "concurrency": conc,
                    "workers": workers,
                    "intra_op_threads": intra,
                    **result,
                }
            )
            print(result_key("in-process", precision), cells[-1], file=sys.stderr, flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"target": "in-process", "peak_rss_mib": round(peak, 1), "cells": cells}


def bench_reference(args, sets: dict[str, Path], model_dir: Path, precision: str = "fp32") -> dict:
    cmd = [sys.executable, __file__, "--reference-worker", "--model-dir", str(model_dir), "--images"]
    cmd += [str(p) for p in sets.values()]
    cmd += ["--concurrency", *map(str, args.concurrency), "--seconds", str(args.seconds)]
    cmd += ["--precisions", precision]
    done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        return {"target": "in-process", "error": f"exit status {done.returncode}", "command": cmd}
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict]) -> dict:
    """One target's rounds merged: per cell the round with the most images/s (as timeit keeps the
    fastest repeat: background noise only ever slows a run down), every round's images/s kept."""
    ok = [r for r in runs if "cells" in r]
    if not ok:
        return runs[0]
    merged = {**ok[0], "peak_rss_mib": max(r.get("peak_rss_mib", 0.0) for r in ok)}
    if len(ok) < len(runs):
        merged["round_errors"] = [r["error"] for r in runs if "error" in r]
    cells = []
    for first in ok[0]["cells"]:
        same = [
            c
            for r in ok
            for c in r["cells"]
            if (c["set"], c["concurrency"]) == (first["set"], first["concurrency"])
        ]
        best = max(same, key=lambda c: c["images_per_s"])
        cells.append({**best, "rounds_images_per_s": [c["images_per_s"] for c in same]})
    merged["cells"] = cells
    return merged


# --- report ---------------------------------------------------------------------------------------


def cell(result: dict, name: str, conc: int) -> dict | None:
    return next((c for c in result.get("cells", []) if c["set"] == name and c["concurrency"] == conc), None)


def markdown(report: dict) -> str:
    """The serving table from serve.json's content: a row per images, concurrency and precision."""
    results, concurrency = report["results"], report["settings"]["concurrency"]
    sets = [f"{size}px" for size in report["settings"]["sizes"]]
    precisions = [p for p in PRECISIONS if any(result_key(t, p) in results for t in TARGETS)]
    targets = [t for t in TARGETS if any(result_key(t, p) in results for p in precisions)]
    peers = [t for t in targets if t != "manylabel"]
    int8 = "int8" in precisions and result_key("manylabel", "int8") in results
    head = ["images", "conc", "precision", *(TITLES[t] for t in targets)]
    head += [f"ours/{TITLES[t]}" for t in peers] + (["ours int8/fp32"] if int8 else [])
    lines = [
        "Serving: images/s · p50/p99 latency ms per cell; ours/X = manylabel images/s ÷ X's at the same "
        "precision (> 1: manylabel faster); – : not run (the peers serve the fp32 graph only).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in sets:
        for conc in concurrency:
            for precision in precisions:
                row = [name, str(conc), precision]
                for t in targets:
                    row.append(_cell_text(results.get(result_key(t, precision)), name, conc))
                ours = _ips(results.get(result_key("manylabel", precision)), name, conc)
                for t in peers:
                    theirs = _ips(results.get(result_key(t, precision)), name, conc)
                    row.append(f"{ours / theirs:.2f}" if ours and theirs else "–")
                if int8:
                    fp32 = _ips(results.get("manylabel"), name, conc)
                    row.append(f"{ours / fp32:.2f}" if precision == "int8" and ours and fp32 else "–")
                lines.append("| " + " | ".join(row) + " |")
    for precision in precisions:
        rss = ["peak RSS MiB", "", precision]
        for t in targets:
            r = results.get(result_key(t, precision))
            rss.append("–" if r is None else f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else "error")
        ours_rss = results.get(result_key("manylabel", precision), {}).get("peak_rss_mib")
        for t in peers:
            theirs = results.get(result_key(t, precision), {}).get("peak_rss_mib")
            rss.append(f"{ours_rss / theirs:.2f}" if ours_rss and theirs else "–")
        lines.append("| " + " | ".join(rss + (["–"] if int8 else [])) + " |")
    return "\n".join(lines + _quiet_and_errors(report))


def _ips(result: dict | None, name: str, conc: int) -> float | None:
    c = cell(result, name, conc) if result else None
    return c.get("images_per_s") if c else None


def _cell_text(result: dict | None, name: str, conc: int) -> str:
    if result is None:
        return "–"
    if "error" in result:
        return "error"
    c = cell(result, name, conc)
    if c is None or not c.get("requests"):
        return "–"
    bad = f", {c['errors']} errors" if c.get("errors") else ""
    return f"{c['images_per_s']:.1f} · {c['p50_ms']:.0f}/{c['p99_ms']:.0f}{bad}"


def _title(key: str) -> str:
    """serve.json key -> its name in the table: `manylabel-int8` -> `manylabel int8`."""
    target = key.removesuffix("-int8")
    return TITLES[target] + (" int8" if target != key else "")


def _quiet_and_errors(report: dict) -> list[str]:
    results, lines = report["results"], []
    others = [(c.get("other_cores", 0.0), k) for k, r in results.items() for c in r.get("cells", [])]
    if others:
        worst, who = max(others)
        spreads = [
            1 - min(c["rounds_images_per_s"]) / max(c["rounds_images_per_s"])
            for r in results.values()
            for c in r.get("cells", [])
            if len(c.get("rounds_images_per_s", [])) > 1 and max(c["rounds_images_per_s"]) > 0
        ]
        spread = (
            f" Each cell is the best of {report['settings']['rounds']} rounds of "
            f"{report['settings']['seconds_per_cell']:g} s; the worse round was at most "
            f"{max(spreads):.0%} slower (median {statistics.median(spreads):.0%})."
            if spreads
            else ""
        )
        lines += [
            "",
            f"Quiet check: {report.get('busy_cores_before', '?')} cores busy before the run; other processes "
            f"used at most {worst:.2f} cores during any cell ({_title(who)}).{spread}",
        ]
    errors = [f"- {_title(k)}: `{r['error'].splitlines()[0]}`" for k, r in results.items() if "error" in r]
    if errors:
        lines += ["", "Targets that could not run (full message in serve.json):", *errors]
    return lines


def biggest_gap(results: dict[str, dict]) -> dict | None:
    """The cell where manylabel's images/s is lowest relative to another target's."""
    ours = results.get("manylabel")
    if not ours or "cells" not in ours:
        return None
    worst = None
    for t, r in results.items():
        if t not in TARGETS or t == "manylabel" or "cells" not in r:  # fp32 targets only
            continue
        for c in ours["cells"]:
            other = cell(r, c["set"], c["concurrency"])
            if other and other.get("images_per_s") and c.get("images_per_s"):
                ratio = c["images_per_s"] / other["images_per_s"]
                if worst is None or ratio < worst["ratio"]:
                    worst = {
                        "vs": t,
                        "set": c["set"],
                        "concurrency": c["concurrency"],
                        "ratio": round(ratio, 3),
                    }
    return worst


# --- the GPU run (benchmarks/gpu.sh) --------------------------------------------------------------

GPU_CONCURRENCY = [1, 8, 32, 128, 256]
GPU_PER_REQUEST = [1, 16]
CUDA = "CUDAExecutionProvider"
# Past BentoML's max_concurrency (64) and MANYLABEL_MAX_QUEUE (2048 images) a request is answered 503:
# raised so that 256 connections of 16 images each are all served.
GPU_SERVER_ENV = {
    "MANYLABEL_PRECISION": "fp32",  # auto serves fp32 on CUDA anyway: pinned so the rows say what ran
    "MANYLABEL_MAX_QUEUE": "16384",
    "BENTOML_CONFIG_OPTIONS": "services.manylabel.traffic.max_concurrency=1024",
}


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


_SPEC = None


def _decode_batch(images: list[bytes]) -> np.ndarray:  # in a pool process
    from service.preprocess import load_image

    return np.stack([load_image(data, _SPEC) for data in images])


def _init_decoder(spec) -> None:
    global _SPEC
    _SPEC = spec


def gpu_reference(
    model_dir: Path, manifest, images: list[bytes], seconds: float, provider: str
) -> list[dict]:
    """The in-process limit on the GPU: decode in a process pool (one per core but one), batched
    onnxruntime runs on the main thread; and the inference-only ceiling on pre-decoded batches."""
    from concurrent.futures import ProcessPoolExecutor

    from service.server.runtime import open_session

    spec, inp = manifest.preprocessing, manifest.preprocessing.input_name
    path = model_dir / manifest.models["best"].file
    session, report = open_session(path, provider=provider, intra_op_threads=os.cpu_count() or 1)
    workers = max((os.cpu_count() or 2) - 1, 1)
    cells = []
    with ProcessPoolExecutor(workers, initializer=_init_decoder, initargs=(spec,)) as pool:
        for batch in (16, 64):
            chunks = [
                [images[(i + k) % len(images)] for k in range(batch)] for i in range(0, 8 * batch, batch)
            ]
            decoded = pool.submit(_decode_batch, chunks[0]).result()
            session.run(None, {inp: decoded})  # warm-up at this batch size
            t0, done = time.perf_counter(), 0
            inflight = [pool.submit(_decode_batch, chunks[i % len(chunks)]) for i in range(2 * workers)]
            i = len(inflight)
            while time.perf_counter() - t0 < seconds:
                arrays = inflight.pop(0).result()
                inflight.append(pool.submit(_decode_batch, chunks[i % len(chunks)]))
                i += 1
                session.run(None, {inp: arrays})
                done += len(arrays)
            elapsed = time.perf_counter() - t0
            for f in inflight:
                f.cancel()
            t1, runs = time.perf_counter(), 0
            while time.perf_counter() - t1 < seconds / 2:
                session.run(None, {inp: decoded})
                runs += 1
            inference = runs * batch / (time.perf_counter() - t1)
            cells.append(
                {
                    "batch": batch,
                    "decode_processes": workers,
                    "images_per_s": round(done / elapsed, 1),
                    "inference_only_images_per_s": round(inference, 1),
                    "provider": report.active,
                }
            )
            print("gpu in-process", cells[-1], file=sys.stderr, flush=True)
    return cells


def gpu_cells(
    args, url: str, port: int, images: dict[str, list[bytes]], sampler: GpuSampler, pid: int
) -> list:
    cells = []
    for name, data in images.items():
        for per in args.per_request:
            requests = [
                encode_images(
                    "127.0.0.1", port, [(f"{i}-{k}.jpg", data[(i * per + k) % len(data)]) for k in range(per)]
                )
                for i in range(max(len(data) // per, 8))
            ]
            asyncio.run(http_load("127.0.0.1", port, requests, 8, WARM_UP_S))
            for conc in args.concurrency:
                before, cpu = batch_histogram(url), tree_cpu_seconds(pid)
                t0 = time.time()
                result = asyncio.run(http_load("127.0.0.1", port, requests, conc, args.seconds))
                t1 = time.time()
                n_images = max(result["requests"] * per, 1)
                cell = {
                    "set": name,
                    "images_per_request": per,
                    "concurrency": conc,
                    "images_per_s": round(result["images_per_s"] * per, 1),  # http_load counts requests
                    "requests_per_s": result["images_per_s"],
                    "p50_ms": result["p50_ms"],
                    "p99_ms": result["p99_ms"],
                    "requests": result["requests"],
                    "errors": result.get("errors", 0),
                    "first_error": result.get("first_error"),
                    "server_cpu_ms_per_image": round((tree_cpu_seconds(pid) - cpu) * 1000 / n_images, 2),
                    "batch_size": batch_delta(before, batch_histogram(url)),
                    "gpu": sampler.window(t0, t1),
                }
                cells.append(cell)
                print("gpu manylabel", cell, file=sys.stderr, flush=True)
    return cells


def gpu_run(args: argparse.Namespace) -> dict:
    """manylabel on CUDA (fp32) under closed-loop load, and the in-process CUDA reference."""
    from service.store import load_model

    dry = os.environ.get("GPU_DRY_RUN") == "1"
    m, stored = machine(), load_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="manylabel-bench-gpu-"))
    sampler = GpuSampler(args.out / "nvidia-smi.csv")
    provider = "auto" if dry else "cuda"  # dry: no GPU here; auto falls back to the CPU and says so
    env = {**os.environ, "MANYLABEL_MODEL": args.model, "MANYLABEL_PROVIDER": provider, **GPU_SERVER_ENV}
    env["BENTOML_DO_NOT_TRACK"] = "true"
    try:
        sets = make_image_sets(args.images, args.sizes, args.limit, workdir / "images")
        images = {name: [p.read_bytes() for p in sorted(f.glob("*.jpg"))] for name, f in sets.items()}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = server_command("manylabel", args.model, stored.path, port, "")
        log = workdir / "manylabel.log"
        try:
            proc = start(cmd, env, log, next(iter(images.values()))[0], port)
        except RuntimeError as exc:  # MANYLABEL_PROVIDER=cuda refuses to start when CUDA does not load
            raise SystemExit(f"FAIL: manylabel did not start: {exc}; server log:\n{tail(log, 40)}") from None
        try:
            summary = httpx.get(f"{url}/model", timeout=30).json()
            active = summary["provider"]["active"]
            if active != CUDA and not dry:
                raise SystemExit(
                    f"FAIL: manylabel runs on {active}, not {CUDA} (note: {summary['provider']['note']}); "
                    f"server log:\n{tail(log, 40)}"
                )
            cells = gpu_cells(args, url, port, images, sampler, proc.pid)
            peak = peak_rss_mib(proc.pid)
        finally:
            stop(proc)
        reference = gpu_reference(
            stored.path, stored.manifest, next(iter(images.values())), args.seconds, provider
        )
    finally:
        sampler.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "machine": m,
        "model": stored.tag,
        "dry_run": dry,
        "provider": summary["provider"],
        "precision": summary.get("precision"),
        "serving": summary["serving"],
        "server_env": {k: env[k] for k in ("MANYLABEL_PROVIDER", *GPU_SERVER_ENV)},
        "settings": {
            "sizes": args.sizes,
            "images_per_size": args.limit,
            "concurrency": args.concurrency,
            "images_per_request": args.per_request,
            "seconds_per_cell": args.seconds,
            "warm_up_s": WARM_UP_S,
        },
        "manylabel": {"peak_rss_mib": peak, "cells": cells},
        "in_process": reference,
    }
    (args.out / "gpu.json").write_text(json.dumps(report, indent=1))
    table = gpu_markdown(report)
    (args.out / "gpu.md").write_text(f"{table}\n\nMachine: {machine_line(m)}.\n")
    print(table)
    return report


def gpu_markdown(report: dict) -> str:
    s = report["serving"]
    lines = [
        f"GPU serving{' (DRY RUN on CPU: not a GPU measurement)' if report['dry_run'] else ''}: "
        f"{report['model']} fp32 on {report['provider']['active']}; max batch {s['max_batch_size']}, "
        f"wait {s['max_latency_ms']:g} ms, {s['decode_threads']} decode threads. Closed loop, "
        f"{report['settings']['seconds_per_cell']:g} s per cell; batch = images per onnxruntime call "
        "(mean, from /metrics); GPU = nvidia-smi utilisation mean/max % and memory.",
        "",
        "| images | per request | conc | images/s | p50/p99 ms | batch mean | GPU util % | GPU MiB "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["manylabel"]["cells"]:
        gpu = c["gpu"] or {}
        util = f"{gpu['util_mean']:.0f}/{gpu['util_max']:.0f}" if gpu else "–"
        mean = c["batch_size"]["mean"]
        lines.append(
            f"| {c['set']} | {c['images_per_request']} | {c['concurrency']} | {c['images_per_s']:.1f} | "
            f"{c['p50_ms']:.0f}/{c['p99_ms']:.0f} | {mean if mean is not None else '–'} | {util} | "
            f"{gpu.get('mem_mib', '–')} | {c['errors']} |"
        )
    lines += [
        "",
        "In-process CUDA reference (decode in a process pool, batched runs; inference only: pre-decoded):",
        "",
    ]
    lines += ["| batch | decode processes | images/s | inference only images/s |", "|---|---|---|---|"]
    for r in report["in_process"]:
        lines.append(
            f"| {r['batch']} | {r['decode_processes']} | {r['images_per_s']:.1f} "
            f"| {r['inference_only_images_per_s']:.1f} |"
        )
    lines += ["", f"manylabel peak RSS: {report['manylabel']['peak_rss_mib']:.0f} MiB."]
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------------------


def default_peers_python() -> str:
    return os.environ.get("PEERS_PYTHON", "/tmp/peers-venv/bin/python")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model name in the BentoML store (BENTOML_HOME)")
    ap.add_argument("--images", nargs="+", type=Path, required=True, help="folders of JPEG photos")
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 1000], help="longest sides to resize to")
    ap.add_argument("--limit", type=int, default=48, help="photos per size")
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument(
        "--seconds", type=float, default=4.0, help="per (target, size, concurrency) cell and round"
    )
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all targets; each cell keeps its best")
    ap.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    ap.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=list(PRECISIONS),
        help="int8: also in-process and manylabel on the model's int8 variant, when it has one",
    )
    ap.add_argument("--peers-python", default=default_peers_python(), help="python of the peers' venv")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--wait-quiet", type=float, default=120, help="seconds to wait for an idle machine")
    ap.add_argument("--gpu", action="store_true", help="the GPU run (benchmarks/gpu.sh): manylabel on CUDA")
    ap.add_argument(
        "--per-request", nargs="+", type=int, default=GPU_PER_REQUEST, help="--gpu: images per request"
    )
    ap.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def bench_units(args: argparse.Namespace, manifest) -> list[tuple[str, str]]:
    """(target, precision) pairs to run: every target in fp32, in-process and manylabel in int8 too."""
    units = [(t, "fp32") for t in args.targets] if "fp32" in args.precisions else []
    if "int8" in args.precisions:
        if "int8" in manifest.models["best"].precisions:
            units += [(t, "int8") for t in args.targets if t in INT8_TARGETS]
        else:
            print("the model has no kept int8 variant: int8 rows skipped", file=sys.stderr, flush=True)
    return units


def run(args: argparse.Namespace) -> dict:
    from service.store import load_model

    m = machine()
    stored = load_model(args.model)
    busy_before = wait_quiet(args.wait_quiet)
    workdir = Path(tempfile.mkdtemp(prefix="manylabel-bench-serve-"))
    try:
        sets = make_image_sets(args.images, args.sizes, args.limit, workdir / "images")
        units = bench_units(args, stored.manifest)
        rounds: list[dict[str, dict]] = []
        for r in range(args.rounds):
            # Later rounds run the targets in the reverse order, so no target always meets
            # the same stretch of the host's background noise.
            order = units if r % 2 == 0 else units[::-1]
            rounds.append({})
            for target, precision in order:
                key = result_key(target, precision)
                if target == "in-process":
                    rounds[r][key] = bench_reference(args, sets, stored.path, precision)
                else:
                    rounds[r][key] = bench_server(target, args, sets, stored.path, workdir, precision)
                if "error" in rounds[r][key]:
                    print(f"{key}: {rounds[r][key]['error']}", file=sys.stderr, flush=True)
        results = {key: best_of([rd[key] for rd in rounds]) for key in rounds[0]}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "machine": m,
        "model": stored.tag,
        "busy_cores_before": busy_before,
        "settings": {
            "sizes": args.sizes,
            "images_per_size": args.limit,
            "concurrency": args.concurrency,
            "seconds_per_cell": args.seconds,
            "rounds": args.rounds,
            "precisions": sorted({p for t, p in units}, key=PRECISIONS.index),
            "warm_up_s": WARM_UP_S,
            "peers_python": args.peers_python,
        },
        "results": results,
        "biggest_gap": biggest_gap(results),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (args.out / "serve.md").write_text(f"{table}\n\nMachine: {machine_line(m)}.\n")
    print(table)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reference_worker:
        worker = reference_worker(
            args.model_dir, args.images, args.concurrency, args.seconds, args.precisions[0]
        )
        print(json.dumps(worker))
        return 0
    if not args.model:
        raise SystemExit("--model NAME is required (a model in the BentoML store at BENTOML_HOME)")
    if args.gpu:
        gpu_run(args)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
