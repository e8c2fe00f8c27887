"""One target under closed-loop load: a server over HTTP (`bench_server`) or the in-process reference
in a process of its own (`bench_reference`); `best_of` merges rounds. Part of benchmarks/serve.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(p) for p in (HERE, REPO) if str(p) not in sys.path]

from serve_quick import encode_request, free_port, http_load, stats, tree_cpu_seconds  # noqa: E402
from serve_setup import (  # noqa: E402
    WARM_UP_S,
    machine_busy_seconds,
    peak_rss_mib,
    result_key,
    server_command,
    start,
    stop,
    tail,
)


def bench_server(
    target: str, args, sets: dict[str, Path], model_dir: Path, workdir: Path, precision: str = "fp32"
) -> dict:
    port = free_port()
    env = {**os.environ, "MANYLABEL_MODEL": args.model, "BENTOML_DO_NOT_TRACK": "true"}
    env["MANYLABEL_PRECISION"] = precision  # pinned: auto would serve int8 in the fp32 rows
    log = workdir / f"{result_key(target, precision)}.log"
    cmd = server_command(target, args.model, model_dir, port, args.peers_python, precision)
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
    cmd = [
        sys.executable,
        str(HERE / "serve.py"),
        "--reference-worker",
        "--model-dir",
        str(model_dir),
        "--images",
    ]
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
