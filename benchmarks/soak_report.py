"""Soak test, the report: per-window rows, RSS growth after warm-up, restarts, the checks, and the
markdown of soak.md (see soak.py)."""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections import Counter

import numpy as np
from serve import machine_line
from soak_probe import probe_markdown
from soak_traffic import FAILED, Kind, Load


def warm_up_seconds(duration: float) -> float:
    """The first minute, or the first fifth of a run shorter than five minutes."""
    return min(60.0, duration / 5)


def window_rows(load: Load, samples: list[dict], kinds: list[Kind], window: float, duration: float):
    """Per window: requests, images/s, p50/p99, errors, RSS at its end and its peak, CPU."""
    rows = []
    count = max(1, round(duration / window))  # a last sliver (the run's final answers) joins the last window
    for i in range(count):
        lo, hi = i * window, duration if i == count - 1 else (i + 1) * window
        recs = [r for r in load.records if lo <= r[0] < hi]
        inside = [s for s in samples if lo <= s["t"] <= hi + 0.5]
        lat = np.array([r[1] for r in recs]) * 1000 if recs else np.zeros(1)
        row = {
            "from_s": round(lo),
            "to_s": round(hi),
            "requests": len(recs),
            "requests_per_s": round(len(recs) / (hi - lo), 1),
            "images_per_s": round(sum(kinds[r[2]].images for r in recs if r[3] == 200) / (hi - lo), 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "unexpected": sum(1 for r in recs if r[3] != kinds[r[2]].expected),
        }
        with_batches = [s for s in samples if "batch_buckets" in s and s["t"] <= hi + 0.5]
        if with_batches:
            before = [s for s in with_batches if s["t"] <= lo + 0.5]
            row["largest_batch"] = largest_batch(
                before[-1]["batch_buckets"] if before else {}, with_batches[-1]["batch_buckets"]
            )
        if len(inside) >= 2:
            a, b = inside[0], inside[-1]
            span = b["t"] - a["t"]
            server = b["server_cpu_s"] - a["server_cpu_s"]
            own = server + b["client_cpu_s"] - a["client_cpu_s"]
            row["rss_end_mib"] = b["rss_mib"]
            row["rss_max_mib"] = max(s["rss_mib"] for s in inside)
            row["server_cores"] = round(server / span, 2)
            row["other_cores"] = round(max(b["machine_busy_s"] - a["machine_busy_s"] - own, 0.0) / span, 2)
        rows.append(row)
    return rows


def largest_batch(before: dict, after: dict) -> dict[str, str]:
    """Per model, the upper bound of the largest batch-size bucket that got batches in between."""
    out = {}
    for model, buckets in after.items():
        old = before.get(model, {})
        bounds = sorted((float(le), le) for le in buckets if le != "+Inf")
        gained = [
            le
            for (_, prev), (_, le) in itertools.pairwise([(0.0, None), *bounds])
            if buckets[le] - old.get(le, 0.0) > (buckets[prev] - old.get(prev, 0.0) if prev else 0.0)
        ]
        if gained:
            out[model] = f"{float(gained[-1]):g}"
    return out


def rss_growth(samples: list[dict], warm_up: float) -> dict:
    """RSS at the end of warm-up and at the end (medians of 10 s around them), the peak after
    warm-up, and the slope (least squares, MiB/min) over all of it and over its second half."""
    after = [(s["t"], s["rss_mib"]) for s in samples if s["t"] >= warm_up]
    if len(after) < 4:
        return {}
    t = np.array([a[0] for a in after])
    rss = np.array([a[1] for a in after])
    base = statistics.median(r for s, r in after if s <= warm_up + 10)
    end = statistics.median(r for s, r in after if s >= t[-1] - 10)
    half = t >= (t[0] + t[-1]) / 2

    def slope(mask: np.ndarray) -> float:
        return round(float(np.polyfit(t[mask], rss[mask], 1)[0]) * 60, 2) if mask.sum() >= 3 else 0.0

    return {
        "warm_up_s": round(warm_up, 1),
        "baseline_mib": round(base, 1),
        "end_mib": round(end, 1),
        "peak_mib": round(float(rss.max()), 1),
        "growth": round(end / base - 1, 4),
        "peak_growth": round(float(rss.max()) / base - 1, 4),
        "slope_mib_per_min": slope(np.ones_like(half)),
        "slope_second_half_mib_per_min": slope(half),
        "first_sample_mib": samples[0]["rss_mib"],
    }


def restarts(samples: list[dict]) -> dict:
    """Worker PIDs that came or went, and /readyz answers other than 200."""
    first = set(samples[0]["pids"]) if samples else set()
    changes = []
    for prev, cur in itertools.pairwise(samples):
        if prev["pids"] != cur["pids"]:
            changes.append({"t": cur["t"], "before": prev["pids"], "after": cur["pids"]})
    bad = [{"t": s["t"], "readyz": s["readyz"]} for s in samples if s["readyz"] != 200]
    return {"initial_pids": sorted(first), "pid_changes": changes, "readyz_failures": bad}


def markdown(report: dict) -> str:
    s, g, r = report["settings"], report["rss"], report["restarts"]
    lines = [
        f"Soak: {s['minutes']:g} min, {s['clients']} clients in a closed loop, {report['model']}, "
        f"{s['photos']} photos from `{s['images']}`.",
        f"Command: `{report['command']}`.",
        f"Server: `{report['server'].get('command', report['server'].get('url'))}`"
        + (
            f" with {' '.join(f'{k}={v}' for k, v in report['server']['env'].items())}"
            if report["server"].get("env")
            else ""
        )
        + ".",
        f"Machine: {machine_line(report['machine'])}.",
        "",
        f"**{report['requests']:,} requests** in {report['seconds']:.0f} s "
        f"({report['requests'] / report['seconds']:.1f}/s, {report['images_per_s']:.1f} images/s), "
        f"p50 {report['p50_ms']:.0f} ms, p99 {report['p99_ms']:.0f} ms; "
        f"**{report['unexpected']} with an unexpected status**.",
        "",
        "| request | expected | count | statuses |",
        "|---|---|---|---|",
    ]
    for name, k in report["by_kind"].items():
        statuses = ", ".join(f"{st}: {n}" for st, n in sorted(k["statuses"].items()))
        lines.append(f"| {name} | {k['expected']} | {k['count']} | {statuses} |")
    window = s["window_s"]
    lines += [
        "",
        f"Per {'minute' if window == 60 else f'{window:g} s'} (RSS: the server's whole process tree, "
        "sampled every second; largest batch: the biggest bucket of the service's batch-size histogram "
        "that got onnxruntime calls, per model; cores: CPU the server used, and what other processes "
        "used meanwhile):",
        "",
        "| from s | req/s | images/s | p50 ms | p99 ms | unexpected | RSS end MiB | RSS max MiB "
        "| largest batch | server cores | other cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in report["windows"]:
        lines.append(
            f"| {w['from_s']} | {w['requests_per_s']} | {w['images_per_s']} | {w['p50_ms']:.0f} | "
            f"{w['p99_ms']:.0f} | {w['unexpected']} | {w.get('rss_end_mib', '–')} | "
            f"{w.get('rss_max_mib', '–')} | "
            f"{', '.join(f'{m} ≤{b}' for m, b in w.get('largest_batch', {}).items()) or '–'} | "
            f"{w.get('server_cores', '–')} | {w.get('other_cores', '–')} |"
        )
    if g:
        lines += [
            "",
            f"RSS after warm-up (first {g['warm_up_s']:g} s excluded): "
            f"{g['baseline_mib']} -> {g['end_mib']} MiB "
            f"(**{g['growth']:+.1%}**, limit {s['max_growth']:.0%}), peak {g['peak_mib']} MiB "
            f"({g['peak_growth']:+.1%}); slope {g['slope_mib_per_min']:+.2f} MiB/min over the whole "
            f"run after warm-up, {g['slope_second_half_mib_per_min']:+.2f} MiB/min over its second half; "
            f"{g['mib_per_1000_requests']:+.2f} MiB per 1000 requests. "
            f"At start {g['first_sample_mib']} MiB.",
        ]
    lines += [
        "",
        f"Restarts: {len(r['pid_changes'])} changes of the server's PIDs, "
        f"{len(r['readyz_failures'])} /readyz failures in {len(report['samples'])} probes.",
        "",
        "Checks: "
        + ", ".join(f"{k} {'ok' if v else '**FAILED**'}" for k, v in report["checks"].items())
        + ".",
    ]
    if report.get("failures"):
        lines += ["", "First unexpected answers:", *(f"- `{f[:200]}`" for f in report["failures"][:5])]
    if report.get("probe"):
        lines += ["", *probe_markdown(report["probe"], window)]
    return "\n".join(lines) + "\n"


def summarize(
    args: argparse.Namespace, kinds: list[Kind], load: Load, samples: list[dict], seconds: float
) -> dict:
    lat = np.array([r[1] for r in load.records]) * 1000
    by_kind: dict[str, dict] = {
        k.name: {"expected": k.expected, "count": 0, "statuses": Counter()} for k in kinds
    }
    for _, _, k, status in load.records:
        by_kind[kinds[k].name]["count"] += 1
        by_kind[kinds[k].name]["statuses"][str(status) if status != FAILED else "failed"] += 1
    unexpected = sum(1 for r in load.records if r[3] != kinds[r[2]].expected)
    warm_up = warm_up_seconds(seconds)
    growth = rss_growth(samples, warm_up)
    if growth:  # normalised by the work done, since a shared machine's noise moves the request rate
        after = sum(1 for r in load.records if r[0] >= warm_up)
        growth["mib_per_1000_requests"] = round(
            (growth["end_mib"] - growth["baseline_mib"]) * 1000 / after, 2
        )
    rs = restarts(samples)
    checks = {
        "statuses": unexpected == 0 and bool(load.records),
        f"RSS growth < {args.max_growth:.0%}": bool(growth) and growth["growth"] < args.max_growth,
        "no restart": not rs["pid_changes"],
        "/readyz": not rs["readyz_failures"],
    }
    return {
        "requests": len(load.records),
        "seconds": round(seconds, 1),
        "images_per_s": round(sum(kinds[r[2]].images for r in load.records if r[3] == 200) / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "unexpected": unexpected,
        "by_kind": {name: {**v, "statuses": dict(v["statuses"])} for name, v in by_kind.items()},
        "windows": window_rows(
            load, samples, kinds, args.window or (60.0 if seconds >= 120 else 10.0), seconds
        ),
        "rss": growth,
        "restarts": rs,
        "checks": checks,
        "passed": all(checks.values()),
        "failures": load.failures,
    }
