"""The serving benchmark's Markdown: one row per image set and concurrency, ours/X ratios, the
quiet check and the biggest gap. Part of benchmarks/serve.py.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(p) for p in (HERE, REPO) if str(p) not in sys.path]

from serve_setup import PRECISIONS, TARGETS, TITLES, result_key  # noqa: E402


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
        "precision (> 1: manylabel faster); – : not run.",
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
