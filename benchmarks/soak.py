"""Soak test: the service at saturation for minutes, with mixed traffic; does its memory level off?

    BENTOML_HOME=... .venv/bin/python benchmarks/soak.py --model voc5 [--minutes 10] [--url URL]

Starts `bentoml serve service.server.service:ManyLabel` on 127.0.0.1 (or drives a running one,
`--url`), then `--clients` connections in a closed loop (each sends its next request when its answer
arrives) for `--minutes`. Every ten requests: four single JPEGs and three 4-image zips on /predict
(some with `which=last` or a `threshold`), a zip bundle of a 4-image zip and a csv bundle of two
images on /predict_bundle, and one bad request, in turn a non-image, a corrupt zip and an unknown
form field, each expecting 400. Any other status, a connection error or a 60 s timeout counts as a
failure. Once a second a thread samples the RSS of the server's whole process tree (psutil), its
PIDs and /readyz; every 10 s the service's batch-size histogram (/metrics).

Report (--out/soak.json and soak.md; the name with --name): requests and errors by status, p50/p99,
RSS and the largest batch per minute, RSS growth after warm-up (the first minute, or the first fifth
of a run shorter than five minutes, is excluded; must stay under --max-growth; also per 1000
requests, since on a shared machine the request rate moves with the noise), whether the server's
PIDs changed or /readyz failed, and the cores other processes kept busy. Exit status 1 when a check
fails.

`--probe` puts a memory probe into the server's worker (a `sitecustomize.py` written to a temporary
folder on PYTHONPATH; the service's code is not touched): every 10 s it logs the worker's RSS,
glibc's malloc statistics (`mallinfo2`, the number of arenas), Python's allocated blocks and gc
counts; every minute the most numerous object types, the pending asyncio timers by callback and the
resident size of each memory mapping; with `--tracemalloc N` also a tracemalloc snapshot (N frames).
The report compares the end of warm-up with the end of the run. To try a remedy A/B: `--env
KEY=VALUE` sets server variables (say `MALLOC_ARENA_MAX=2`), `--patch-timeout` makes BentoML's
TimeoutMiddleware cancel its per-request timer (see benchmarks/README.md, Soak); the service now
ships that fix itself (service/server/timeouts.py), so this matters only for a build without it.

Modules: this one (CLI, sampler, server, run), soak_traffic.py (the requests and the closed loop),
soak_probe.py (the memory probe) and soak_report.py (the summary and soak.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from serve import machine, machine_busy_seconds, process_tree, start, stop, tail  # noqa: E402
from serve_quick import free_port  # noqa: E402
from soak_probe import probe_env, probe_report  # noqa: E402
from soak_report import markdown, summarize, warm_up_seconds  # noqa: E402
from soak_traffic import build_traffic, closed_loop, read_photos  # noqa: E402

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "voc5_natural_dev" / "images"
SERVICE = "service.server.service:ManyLabel"


# --- the sampler: RSS, workers, /readyz, CPU, once a second ---------------------------------------------


class Sampler(threading.Thread):
    """Samples the server's process tree and /readyz every `every` seconds until stopped."""

    def __init__(self, root_pid: int, base_url: str, every: float = 1.0) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.root_pid, self.base_url, self.every = root_pid, base_url, every
        self.samples: list[dict] = []
        self.started = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5.0) as http:
            while not self._halt.is_set():
                self.samples.append(self.sample(http))
                self._halt.wait(self.every - (time.monotonic() - self.started) % self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def sample(self, http: httpx.Client) -> dict:
        import psutil

        t = time.monotonic() - self.started
        rss, pids, cpu = {}, [], 0.0
        for proc in process_tree(self.root_pid):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                rss[proc.pid] = proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
                pids.append(proc.pid)
        try:
            ready = http.get(f"{self.base_url}/readyz").status_code
        except httpx.HTTPError as exc:
            ready = type(exc).__name__
        batches = self.batch_buckets(http) if len(self.samples) % 10 == 0 else None
        return {
            "t": round(t, 2),
            "rss_mib": round(sum(rss.values()) / 2**20, 1),
            "rss_by_pid_mib": {str(pid): round(v / 2**20, 1) for pid, v in rss.items()},
            "pids": sorted(pids),
            "readyz": ready,
            "server_cpu_s": round(cpu, 3),
            "machine_busy_s": round(machine_busy_seconds(), 3),
            "client_cpu_s": round(time.process_time(), 3),
            **({"batch_buckets": batches} if batches else {}),
        }

    def batch_buckets(self, http: httpx.Client) -> dict[str, dict[str, float]] | None:
        """The service's `manylabel_batch_size` histogram: model -> {upper bound: cumulative count}."""
        try:
            text = http.get(f"{self.base_url}/metrics").text
        except httpx.HTTPError:
            return None
        found: dict[str, dict[str, float]] = {}
        for line in text.splitlines():
            if line.startswith("manylabel_batch_size_bucket{"):
                labels, value = line[len("manylabel_batch_size_bucket{") :].rsplit("} ", 1)
                tags = dict(kv.split("=", 1) for kv in labels.split(","))
                found.setdefault(tags["model"].strip('"'), {})[tags["le"].strip('"')] = float(value)
        return found or None


# --- the server ----------------------------------------------------------------------------------------


def start_server(args: argparse.Namespace, workdir: Path, probe: bytes) -> tuple[subprocess.Popen, int, dict]:
    port = free_port()
    extra = dict(kv.split("=", 1) for kv in args.env)
    env = {
        **os.environ,
        "MANYLABEL_MODEL": args.model,
        "BENTOML_DO_NOT_TRACK": "true",
        **probe_env(args, workdir),
        **extra,
    }
    bentoml = str(Path(sys.executable).parent / "bentoml")
    cmd = [bentoml, "serve", args.service, "--host", "127.0.0.1", "--port", str(port)]
    try:
        proc = start(cmd, env, workdir / "server.log", probe, port)
    except RuntimeError as exc:
        raise SystemExit(f"the server did not start: {exc}\n{tail(workdir / 'server.log', 20)}") from None
    return proc, port, {"command": shlex.join(cmd), "env": extra}


def listening_pid(port: int) -> int:
    """The outermost process of the tree listening on `port` (BentoML's arbiter, not its worker)."""
    import psutil

    pids = {c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"}
    if not pids:
        raise SystemExit(f"no process here listens on port {port}; --url must be a server on this machine")
    return next(p for p in pids if psutil.Process(p).ppid() not in pids)


# --- CLI ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to soak (0.5: a quick check)")
    ap.add_argument(
        "--model", default=os.environ.get("MANYLABEL_MODEL"), help="stored model name (BENTOML_HOME)"
    )
    ap.add_argument("--url", help="drive a running server on this machine instead of starting one")
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of JPEG photos")
    ap.add_argument("--limit", type=int, default=240, help="photos used")
    ap.add_argument("--clients", type=int, default=8, help="connections in the closed loop")
    ap.add_argument("--max-growth", type=float, default=0.10, help="RSS growth after warm-up allowed")
    ap.add_argument("--window", type=float, help="seconds per report row (default 60; 10 under 2 min)")
    ap.add_argument("--service", default=SERVICE, help="what `bentoml serve` serves")
    ap.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="server environment")
    ap.add_argument("--probe", action="store_true", help="memory probe in the worker (see above)")
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES", help="with --probe")
    ap.add_argument(
        "--malloc-trim-every", type=float, default=0, help="with --probe: malloc_trim(0) every N s"
    )
    ap.add_argument(
        "--patch-timeout",
        action="store_true",
        help="with --probe: BentoML's TimeoutMiddleware cancels its timer when a request ends",
    )
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--name", default="soak", help="file names: NAME.json, NAME.md")
    args = ap.parse_args(argv)
    if not args.url and not args.model:
        ap.error("--model NAME (or MANYLABEL_MODEL) is required unless --url is given")
    if args.probe and args.url:
        ap.error("--probe needs a server started here (not --url)")
    if not args.probe and (args.tracemalloc or args.malloc_trim_every or args.patch_timeout):
        ap.error("--tracemalloc, --malloc-trim-every and --patch-timeout work through --probe")
    return args


def run(args: argparse.Namespace) -> dict:
    photos = read_photos(args.images, args.limit)
    workdir = Path(tempfile.mkdtemp(prefix="manylabel-soak-"))
    m = machine()
    proc = None
    if args.url:
        parts = urlsplit(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        root_pid, server = listening_pid(port), {"url": args.url}
    else:
        host = "127.0.0.1"
        proc, port, server = start_server(args, workdir, photos[0][1])
        root_pid = proc.pid
    kinds, cycle = build_traffic(host, port, photos)
    seconds = args.minutes * 60
    sampler = Sampler(root_pid, f"http://{host}:{port}")
    t0_wall = time.time()
    sampler.start()
    try:
        started = time.perf_counter()
        load = asyncio.run(closed_loop(host, port, kinds, cycle, args.clients, seconds))
        elapsed = time.perf_counter() - started
    finally:
        try:
            sampler.stop()
        finally:
            if proc is not None:
                stop(proc)
    report = {
        "command": shlex.join([".venv/bin/python", "benchmarks/soak.py", *sys.argv[1:]]),
        "machine": m,
        "model": args.model,
        "server": server,
        "settings": {
            "minutes": args.minutes,
            "clients": args.clients,
            "images": str(args.images),
            "photos": len(photos),
            "max_growth": args.max_growth,
            "window_s": args.window or (60.0 if elapsed >= 120 else 10.0),
            "cycle": [kinds[k].name for k in cycle],
        },
        **summarize(args, kinds, load, sampler.samples, elapsed),
        "samples": sampler.samples,
    }
    if args.probe:
        report["probe"] = probe_report(workdir / "probe", warm_up_seconds(elapsed), t0_wall)
    if proc is not None and (report["unexpected"] or not report["passed"]):
        report["server_log_tail"] = tail(workdir / "server.log", 40)
    shutil.rmtree(workdir, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{args.name}.md").write_text(markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(markdown(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
