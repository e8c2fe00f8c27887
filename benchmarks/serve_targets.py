"""The targets under closed-loop load, a cell at a time: a server over HTTP (`ServerTarget`) or the
in-process reference in a process of its own (`ReferenceTarget`); `best_of` merges rounds.
Part of benchmarks/serve.py, which runs every target's cell of one (size, concurrency) back to back.
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


class ServerTarget:
    """One server under closed-loop load, cell by cell: started once per round, idle between its
    cells (the other targets' cells of the same (size, concurrency) run in between), stopped by
    `finish`, which returns its results in serve.json's shape."""

    def __init__(
        self, target: str, args, data: dict[str, list[bytes]], model_dir: Path, workdir: Path, precision: str
    ) -> None:
        self.target, self.args, self.data, self.precision = target, args, data, precision
        self.port = free_port()
        env = {**os.environ, "MANYLABEL_MODEL": args.model, "BENTOML_DO_NOT_TRACK": "true"}
        env["MANYLABEL_PRECISION"] = precision  # pinned: auto would serve int8 in the fp32 rows
        self.log = workdir / f"{result_key(target, precision)}.log"
        self.cmd = server_command(target, args.model, model_dir, self.port, args.peers_python, precision)
        self.cells: list[dict] = []
        self.requests: dict[str, list[bytes]] = {}
        self.error: str | None = None
        self.proc = None
        started = time.perf_counter()
        try:
            self.proc = start(self.cmd, env, self.log, next(iter(data.values()))[0], self.port)
        except Exception as exc:  # recorded, not raised: a peer that cannot run here is a result
            self.error = f"{exc}\n{tail(self.log)}".strip()
        self.start_s = round(time.perf_counter() - started, 1)

    def warm_up(self, name: str) -> None:
        """Encode the set's requests for this server and send them for WARM_UP_S at concurrency 8."""
        if self.error is None:
            images = self.data[name]
            self.requests[name] = [
                encode_request("127.0.0.1", self.port, f"{i}.jpg", b) for i, b in enumerate(images)
            ]
            asyncio.run(http_load("127.0.0.1", self.port, self.requests[name], 8, WARM_UP_S))

    def cell(self, name: str, conc: int) -> None:
        if self.error is not None:
            return
        server_cpu, client_cpu = tree_cpu_seconds(self.proc.pid), time.process_time()
        busy, t0 = machine_busy_seconds(), time.perf_counter()
        try:
            result = asyncio.run(
                http_load("127.0.0.1", self.port, self.requests[name], conc, self.args.seconds)
            )
        except OSError as exc:
            result = {"images_per_s": 0.0, "requests": 0, "errors": 1, "first_error": repr(exc)}
        n = max(result["requests"], 1)
        server = tree_cpu_seconds(self.proc.pid) - server_cpu
        client = time.process_time() - client_cpu
        result["cpu_ms_per_image"] = round(server * 1000 / n, 2)
        result["client_cpu_ms_per_image"] = round(client * 1000 / n, 2)
        other = machine_busy_seconds() - busy - server - client
        result["other_cores"] = round(max(other, 0.0) / (time.perf_counter() - t0), 2)
        self.cells.append({"set": name, "concurrency": conc, **result})
        print(result_key(self.target, self.precision), self.cells[-1], flush=True)

    def finish(self) -> dict:
        if self.error is not None:
            return {"target": self.target, "error": self.error, "command": self.cmd}
        peak = peak_rss_mib(self.proc.pid)
        stopping = time.perf_counter()
        stop(self.proc)
        out = {
            "target": self.target,
            "start_s": self.start_s,
            "stop_s": round(time.perf_counter() - stopping, 1),
        }
        out.update(peak_rss_mib=peak, cells=self.cells, command=self.cmd)
        if any(c.get("errors") for c in self.cells):
            out["log_tail"] = tail(self.log)
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


class ReferenceTarget:
    """The in-process reference, one cell per run of its own process (`serve.py --reference-worker`),
    so its cells interleave with the servers' and its peak RSS is its own."""

    def __init__(self, args, sets: dict[str, Path], model_dir: Path, precision: str) -> None:
        self.args, self.sets, self.model_dir, self.precision = args, sets, model_dir, precision
        self.cells: list[dict] = []
        self.peak = 0.0
        self.error: str | None = None
        self.cmd: list[str] = []

    def warm_up(self, name: str) -> None:
        """Nothing to warm: each cell's process warms its own session."""

    def cell(self, name: str, conc: int) -> None:
        if self.error is not None:
            return
        self.cmd = [sys.executable, str(HERE / "serve.py"), "--reference-worker", "--model-dir"]
        self.cmd += [str(self.model_dir), "--images", str(self.sets[name]), "--concurrency", str(conc)]
        self.cmd += ["--seconds", str(self.args.seconds), "--precisions", self.precision]
        done = subprocess.run(self.cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            self.error = f"exit status {done.returncode}"
            return
        worker = json.loads(done.stdout.strip().splitlines()[-1])
        self.cells += worker["cells"]
        self.peak = max(self.peak, worker["peak_rss_mib"])

    def finish(self) -> dict:
        if self.error is not None:
            return {"target": "in-process", "error": self.error, "command": self.cmd}
        return {"target": "in-process", "peak_rss_mib": self.peak, "cells": self.cells}


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
