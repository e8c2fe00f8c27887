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
from collections.abc import Iterable
from pathlib import Path

import httpx

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
TITLES = {
    "in-process": "in-process",
    "manylabel": "manylabel",
    "pytriton": "PyTriton",
    "litserve": "LitServe",
    "fastapi": "FastAPI",
}
WARM_UP_S = 1.0


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


def bench_server(target: str, args, sets: dict[str, Path], model_dir: Path, workdir: Path) -> dict:
    port = free_port()
    env = {**os.environ, "MANYLABEL_MODEL": args.model, "BENTOML_DO_NOT_TRACK": "true"}
    log = workdir / f"{target}.log"
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
    model_dir: Path, manifest, images: list[bytes], conc: int, seconds: float, workers: int, intra: int
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
        str(model_dir / manifest.models["best"].file),
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


def reference_worker(model_dir: Path, sets: list[Path], concurrency: list[int], seconds: float) -> dict:
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
            result = in_process(model_dir, manifest, images, conc, seconds, workers, intra)
            cells.append(
                {
                    "set": folder.name,
                    "concurrency": conc,
                    "workers": workers,
                    "intra_op_threads": intra,
                    **result,
                }
            )
            print("in-process", cells[-1], file=sys.stderr, flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"target": "in-process", "peak_rss_mib": round(peak, 1), "cells": cells}


def bench_reference(args, sets: dict[str, Path], model_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--reference-worker", "--model-dir", str(model_dir), "--images"]
    cmd += [str(p) for p in sets.values()]
    cmd += ["--concurrency", *map(str, args.concurrency), "--seconds", str(args.seconds)]
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
    """The serving table from serve.json's content."""
    results, concurrency = report["results"], report["settings"]["concurrency"]
    sets = [f"{size}px" for size in report["settings"]["sizes"]]
    targets = [t for t in TARGETS if t in results]
    peers = [t for t in targets if t != "manylabel"]
    head = ["images", "conc", *(TITLES[t] for t in targets), *(f"ours/{TITLES[t]}" for t in peers)]
    lines = [
        "Serving: images/s · p50/p99 latency ms per cell; ours/X = manylabel images/s ÷ X's "
        "(> 1: manylabel faster).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in sets:
        for conc in concurrency:
            row = [name, str(conc)]
            for t in targets:
                c = cell(results[t], name, conc)
                if "error" in results[t]:
                    row.append("error")
                elif c is None or not c.get("requests"):
                    row.append("–")
                else:
                    bad = f", {c['errors']} errors" if c.get("errors") else ""
                    row.append(f"{c['images_per_s']:.1f} · {c['p50_ms']:.0f}/{c['p99_ms']:.0f}{bad}")
            ours = cell(results["manylabel"], name, conc) if "manylabel" in results else None
            for t in peers:
                c = cell(results[t], name, conc)
                ok = ours and c and c.get("images_per_s") and ours.get("images_per_s")
                row.append(f"{ours['images_per_s'] / c['images_per_s']:.2f}" if ok else "–")
            lines.append("| " + " | ".join(row) + " |")
    rss = ["peak RSS MiB", ""]
    for t in targets:
        rss.append(f"{results[t]['peak_rss_mib']:.0f}" if "peak_rss_mib" in results[t] else "error")
    ours_rss = results.get("manylabel", {}).get("peak_rss_mib")
    for t in peers:
        theirs = results[t].get("peak_rss_mib")
        rss.append(f"{ours_rss / theirs:.2f}" if ours_rss and theirs else "–")
    lines.append("| " + " | ".join(rss) + " |")
    others = [(c.get("other_cores", 0.0), t) for t in targets for c in results[t].get("cells", [])]
    if others:
        worst, who = max(others)
        spreads = [
            1 - min(c["rounds_images_per_s"]) / max(c["rounds_images_per_s"])
            for t in targets
            for c in results[t].get("cells", [])
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
            f"used at most {worst:.2f} cores during any cell ({TITLES[who]}).{spread}",
        ]
    errors = [
        f"- {TITLES[t]}: `{results[t]['error'].splitlines()[0]}`" for t in targets if "error" in results[t]
    ]
    if errors:
        lines += ["", "Targets that could not run (full message in serve.json):", *errors]
    return "\n".join(lines)


def biggest_gap(results: dict[str, dict]) -> dict | None:
    """The cell where manylabel's images/s is lowest relative to another target's."""
    ours = results.get("manylabel")
    if not ours or "cells" not in ours:
        return None
    worst = None
    for t, r in results.items():
        if t == "manylabel" or "cells" not in r:
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
    ap.add_argument("--peers-python", default=default_peers_python(), help="python of the peers' venv")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--wait-quiet", type=float, default=120, help="seconds to wait for an idle machine")
    ap.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from service.store import load_model

    m = machine()
    stored = load_model(args.model)
    busy_before = wait_quiet(args.wait_quiet)
    workdir = Path(tempfile.mkdtemp(prefix="manylabel-bench-serve-"))
    try:
        sets = make_image_sets(args.images, args.sizes, args.limit, workdir / "images")
        rounds: list[dict[str, dict]] = []
        for r in range(args.rounds):
            # Later rounds run the targets in the reverse order, so no target always meets
            # the same stretch of the host's background noise.
            order = args.targets if r % 2 == 0 else args.targets[::-1]
            rounds.append({})
            for target in order:
                if target == "in-process":
                    rounds[r][target] = bench_reference(args, sets, stored.path)
                else:
                    rounds[r][target] = bench_server(target, args, sets, stored.path, workdir)
                if "error" in rounds[r][target]:
                    print(f"{target}: {rounds[r][target]['error']}", file=sys.stderr, flush=True)
        results = {t: best_of([rd[t] for rd in rounds]) for t in args.targets}
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
        print(json.dumps(reference_worker(args.model_dir, args.images, args.concurrency, args.seconds)))
        return 0
    if not args.model:
        raise SystemExit("--model NAME is required (a model in the BentoML store at BENTOML_HOME)")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
