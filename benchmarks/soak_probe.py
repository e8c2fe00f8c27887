"""Soak test, the memory probe (`soak.py --probe`): the worker's `sitecustomize.py`, its environment
and its logs' part of the report. `--patch-timeout`: the probe cancels BentoML's per-request timeout
timer; the service now ships that fix (service/server/timeouts.py), kept for A/B against a build without.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

PROBE_SOURCE = """
\"\"\"Memory probe, loaded as sitecustomize by benchmarks/soak.py --probe (in the worker only).\"\"\"
import ctypes, gc, json, os, sys, threading, time

def _worker():
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return b"_bentoml_impl.worker" in f.read()
    except OSError:
        return False

class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]

def _malloc(libc):
    info = {}
    try:
        libc.mallinfo2.restype = _Mallinfo2
        m = libc.mallinfo2()
        info = {k: getattr(m, k) for k, _ in _Mallinfo2._fields_}
        buf, size = ctypes.c_char_p(), ctypes.c_size_t()
        libc.open_memstream.restype = ctypes.c_void_p
        stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
        xml = ctypes.string_at(buf, size.value).decode()
        libc.free(buf)
        info["arenas"] = xml.count("<heap nr=")
    except Exception as exc:
        info["error"] = repr(exc)
    return info

def _maps():
    # Resident mappings: [start, size KiB, RSS KiB, perms, path]
    rows, cur = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                cur = [head[0].split("-")[0], (hi - lo) >> 10, 0, head[1], head[5] if len(head) > 5 else ""]
                rows.append(cur)
            elif head[0] == "Rss:":
                cur[2] = int(head[1])
    return [r for r in rows if r[2]]

def _run(out, *args):
    try:
        _loop(out, *args)
    except BaseException:
        import traceback
        with open(os.path.join(out, f"probe-error-{os.getpid()}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise

def _loop(out, every, tracemalloc_frames, trim_every):
    import tracemalloc
    libc = ctypes.CDLL("libc.so.6")
    pid, t0, last_types, last_snap, last_trim = os.getpid(), time.time(), 0.0, 0.0, time.time()
    path = os.path.join(out, f"probe-{pid}.jsonl")
    while True:
        now = time.time()
        if trim_every and now - last_trim >= trim_every:
            libc.malloc_trim(0)
            last_trim = now
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        row = {"time": now, "pid": pid, "rss": rss, "malloc": _malloc(libc), "gc_count": gc.get_count(),
               "gc_collections": [s["collections"] for s in gc.get_stats()],
               "blocks": sys.getallocatedblocks(), "threads": threading.active_count()}
        if tracemalloc.is_tracing():
            row["traced"], row["traced_peak"] = tracemalloc.get_traced_memory()
        if now - last_types >= 60:
            objs = gc.get_objects()
            row["objects"] = len(objs)
            counts, timers = {}, {}
            for o in objs:
                name = type(o).__qualname__
                counts[name] = counts.get(name, 0) + 1
                if name == "TimerHandle":  # its repr names the callback
                    timers[repr(o)] = timers.get(repr(o), 0) + 1
            del objs
            row["types"] = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:40])
            row["timers"] = dict(sorted(timers.items(), key=lambda kv: -kv[1])[:5])
            row["maps"] = _maps()
            last_types = now
        if tracemalloc.is_tracing() and now - last_snap >= 60:
            snap = tracemalloc.take_snapshot().filter_traces([
                tracemalloc.Filter(False, tracemalloc.__file__)])
            snap.dump(os.path.join(out, f"snap-{pid}-{int(now)}.pickle"))
            last_snap = now
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\\n")
        time.sleep(every)

def _patch_timeout():
    # BentoML 1.4.39's TimeoutMiddleware.__call__, plus cancelling its timer when the request ends
    # (the original leaves it pending for `traffic.timeout` seconds, with its future and context).
    # The service now ships this fix (service/server/timeouts.py); kept for A/B against a build without.
    for _ in range(2400):
        mod = sys.modules.get("bentoml._internal.server.http.traffic")
        if mod is not None:
            break
        time.sleep(0.05)
    else:
        return
    import asyncio
    from starlette.responses import JSONResponse

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message):
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except asyncio.TimeoutError:
            if fut.cancel():
                body = {"error": f"Not able to process the request in {self.timeout} seconds"}
                await JSONResponse(body, status_code=504)(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()

    mod.TimeoutMiddleware.__call__ = __call__

if os.environ.get("SOAK_PROBE_DIR") and _worker():
    frames = int(os.environ.get("SOAK_TRACEMALLOC", "0"))
    if frames:
        import tracemalloc
        tracemalloc.start(frames)
    if os.environ.get("SOAK_PATCH_TIMEOUT"):
        threading.Thread(target=_patch_timeout, name="soak-patch", daemon=True).start()
    threading.Thread(target=_run, name="soak-probe", daemon=True, args=(
        os.environ["SOAK_PROBE_DIR"], float(os.environ.get("SOAK_PROBE_EVERY", "10")), frames,
        float(os.environ.get("SOAK_MALLOC_TRIM_EVERY", "0")))).start()
"""


def probe_env(args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    """Environment that loads the memory probe into the server's worker (empty without --probe)."""
    if not args.probe:
        return {}
    hook = workdir / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PROBE_SOURCE)
    probe_dir = workdir / "probe"
    probe_dir.mkdir()
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "SOAK_PROBE_DIR": str(probe_dir), "SOAK_TRACEMALLOC": str(args.tracemalloc)}
    if args.malloc_trim_every:
        env["SOAK_MALLOC_TRIM_EVERY"] = str(args.malloc_trim_every)
    if args.patch_timeout:
        env["SOAK_PATCH_TIMEOUT"] = "1"
    return env


def probe_report(probe_dir: Path, warm_up: float, t0_wall: float) -> dict:
    """The worker's own view: malloc statistics, gc objects, tracemalloc growth after warm-up."""
    rows = []
    for path in probe_dir.glob("probe-*.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return {}
    rows.sort(key=lambda r: r["time"])
    mib = 2**20
    series = []
    for r in rows:
        m = r["malloc"]
        point = {"t": round(r["time"] - t0_wall, 1), "rss_mib": round(r["rss"] / mib, 1)}
        if "arena" in m:
            point |= {
                "malloc_heap_mib": round(m["arena"] / mib, 1),  # from brk/arenas (not mmap)
                "malloc_mmap_mib": round(m["hblkhd"] / mib, 1),  # big blocks, mmapped one by one
                "malloc_in_use_mib": round((m["uordblks"] + m["hblkhd"]) / mib, 1),
                "malloc_free_mib": round(m["fordblks"] / mib, 1),  # free, kept by glibc
                "arenas": m.get("arenas"),
            }
        if "traced" in r:
            point["tracemalloc_mib"] = round(r["traced"] / mib, 1)
        if "objects" in r:
            point["gc_objects"] = r["objects"]
            point["timer_handles"] = r["types"].get("TimerHandle", 0)
        point["py_blocks"] = r.get("blocks")  # sys.getallocatedblocks()
        point["threads"] = r["threads"]
        series.append(point)
    out: dict = {"series": series}
    typed = [r for r in rows if "types" in r]
    if len(typed) >= 2:
        a = next((r for r in typed if r["time"] - t0_wall >= warm_up), typed[0])
        b = typed[-1]
        diff = Counter(b["types"])
        diff.subtract(a["types"])
        out["object_types_growth"] = {
            "from_s": round(a["time"] - t0_wall),
            "to_s": round(b["time"] - t0_wall),
            "top": [(k, v) for k, v in diff.most_common(10) if v > 0],
        }
        out["timers_at_end"] = b.get("timers", {})
        if "maps" in a and "maps" in b and a is not b:
            out["maps_growth"] = maps_growth(a["maps"], b["maps"])
    out["tracemalloc_growth"] = tracemalloc_growth(probe_dir, t0_wall + warm_up)
    return out


def maps_growth(before: list, after: list) -> dict:
    """Where resident memory grew, by kind of mapping ([start, size KiB, RSS KiB, perms, path] rows)."""

    def kind(path: str) -> str:
        return "anonymous" if not path else path if path.startswith("[") else "files"

    old = {m[0]: m for m in before}
    by_kind: Counter = Counter()
    grown = []
    for m in after:
        diff = m[2] - (old[m[0]][2] if m[0] in old else 0)
        by_kind[kind(m[4])] += diff
        grown.append((diff, m))
    gone = set(old) - {m[0] for m in after}
    for addr in gone:
        by_kind[kind(old[addr][4])] -= old[addr][2]
    grown.sort(key=lambda g: -g[0])
    return {
        "by_kind_mib": {k: round(v / 1024, 1) for k, v in by_kind.most_common()},
        "new_mappings": len({m[0] for m in after} - set(old)),
        "gone_mappings": len(gone),
        "top": [
            {
                "start": m[0],
                "size_mib": round(m[1] / 1024, 1),
                "rss_diff_mib": round(d / 1024, 1),
                "path": m[4],
            }
            for d, m in grown[:6]
        ],
    }


def tracemalloc_growth(probe_dir: Path, after: float) -> list[dict]:
    """Top lines by growth between the first snapshot taken at `after` (epoch s) or later and the last."""
    import tracemalloc

    snaps = sorted(probe_dir.glob("snap-*.pickle"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    first = next((p for p in snaps if int(p.stem.rsplit("-", 1)[1]) >= after), None)
    if first is None or first == snaps[-1]:
        return []
    a, b = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(snaps[-1]))
    stats = b.compare_to(a, "traceback" if len(b.traces) and len(b.traces[0].traceback) > 1 else "lineno")
    top = []
    for s in stats[:12]:
        top.append(
            {
                "where": [f"{fr.filename}:{fr.lineno}" for fr in s.traceback][:6],
                "size_diff_kib": round(s.size_diff / 1024, 1),
                "size_kib": round(s.size / 1024, 1),
                "count_diff": s.count_diff,
            }
        )
    return top


def probe_markdown(probe: dict, window: float) -> list[str]:
    lines = [
        "Memory probe in the worker (glibc `mallinfo2`: in use = allocated blocks incl. mmapped ones; "
        "free = freed memory glibc keeps in its arenas):",
        "",
        "| t s | worker RSS MiB | malloc in use | malloc free | mmapped | arenas | tracemalloc MiB "
        "| Python blocks | gc objects | TimerHandles |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    # The rows with object counts (one a minute), else the last row of each report window.
    counted = [p for p in probe["series"] if "gc_objects" in p and p["t"] >= 0]
    shown = (
        counted
        if len(counted) >= 2
        else [*{int(p["t"] // window): p for p in probe["series"] if p["t"] >= 0}.values()]
    )
    for p in shown:
        cells = [f"{p['t']:.0f}", p["rss_mib"], p.get("malloc_in_use_mib"), p.get("malloc_free_mib")]
        cells += [p.get("malloc_mmap_mib"), p.get("arenas"), p.get("tracemalloc_mib"), p.get("py_blocks")]
        cells += [p.get("gc_objects"), p.get("timer_handles")]
        lines.append("| " + " | ".join("–" if c is None else str(c) for c in cells) + " |")
    growth = probe.get("object_types_growth")
    if growth and growth["top"]:
        top = ", ".join(f"{k} {v:+}" for k, v in growth["top"])
        lines += ["", f"Object types that grew from {growth['from_s']} s to {growth['to_s']} s: {top}."]
    if probe.get("timers_at_end"):
        top = ", ".join(f"`{k}` {v}" for k, v in probe["timers_at_end"].items())
        lines += ["", f"Pending timers at the end, by callback: {top}."]
    maps = probe.get("maps_growth")
    if maps:
        kinds = ", ".join(f"{k} {v:+.1f}" for k, v in maps["by_kind_mib"].items())
        top = ", ".join(
            f"{m['start']} ({m['size_mib']} MiB mapping{', ' + m['path'] if m['path'] else ''}) "
            f"{m['rss_diff_mib']:+.1f}"
            for m in maps["top"][:4]
        )
        lines += [
            "",
            f"Resident memory growth over the same span by mapping (MiB): {kinds}; "
            f"{maps['new_mappings']} new mappings, {maps['gone_mappings']} gone; most grown: {top}.",
        ]
    if probe.get("tracemalloc_growth"):
        lines += ["", "tracemalloc, biggest growth after warm-up:", ""]
        for s in probe["tracemalloc_growth"][:8]:
            lines.append(f"- {s['size_diff_kib']:+.0f} KiB ({s['count_diff']:+} blocks): `{s['where'][0]}`")
    return lines
