"""The serving benchmark's set-up: targets, the machine, the image sets, server processes.

Part of benchmarks/serve.py (its command line); `run.py` and `soak.py` use these too.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(p) for p in (HERE, REPO) if str(p) not in sys.path]

PEERS = {
    "pytriton": HERE / "peers" / "pytriton_server.py",
    "litserve": HERE / "peers" / "litserve_server.py",
    "fastapi": HERE / "peers" / "fastapi_server.py",
    "bare": HERE / "peers" / "bare_server.py",  # a reference: HTTP with no framework (its docstring)
}
TARGETS = ("in-process", "manylabel", *PEERS)
PRECISIONS = ("fp32", "int8")  # every target runs both: the peers load best.int8.onnx for int8 rows
TITLES = {
    "in-process": "in-process",
    "manylabel": "manylabel",
    "pytriton": "PyTriton",
    "litserve": "LitServe",
    "fastapi": "FastAPI",
    "bare": "bare HTTP",
}
WARM_UP_S = 1.0


def result_key(target: str, precision: str) -> str:
    """serve.json's key of a target's results: `manylabel` (fp32, as before int8), `manylabel-int8`."""
    return target if precision == "fp32" else f"{target}-{precision}"


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


def server_command(
    target: str, model: str, model_dir: Path, port: int, peers_python: str, precision: str = "fp32"
) -> list[str]:
    """manylabel's command (its precision comes from MANYLABEL_PRECISION) or a peer's, which loads the
    model folder's graph of `precision` (best.onnx or best.int8.onnx, the files manylabel serves)."""
    if target == "manylabel":
        bentoml = str(Path(sys.executable).parent / "bentoml")
        service = "service.server.service:ManyLabel"
        return [bentoml, "serve", service, "--host", "127.0.0.1", "--port", str(port)]
    cmd = [peers_python, str(PEERS[target]), "--model-dir", str(model_dir), "--port", str(port)]
    return [*cmd, "--precision", precision]


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
