"""Threshold search timing: `training.threshold_search.f1_thresholds` on random scores (100 000 x 100).

    python benchmarks/thresholds.py [--rows 100000] [--labels 100] [--repeat 3] [--out benchmarks/results]

Scores are uniform in [0, 1] rounded to 4 decimals (so ties occur, as with real float32 scores);
each label has ~10 % positives whose scores are shifted up, so the search has real cuts to find.
Reports the best and median wall time of `--repeat` runs (one warm-up run first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.threshold_search import f1_thresholds  # noqa: E402


def random_problem(rows: int, labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.random((rows, labels)) < 0.1
    y_score = np.clip(rng.random((rows, labels)) * 0.8 + 0.2 * y_true, 0, 1).round(4)
    return y_true.astype(np.int8), y_score.astype(np.float32)


def bench_thresholds(rows: int = 100_000, labels: int = 100, repeat: int = 3) -> dict:
    y_true, y_score = random_problem(rows, labels)
    names = [f"label{i}" for i in range(labels)]
    f1_thresholds(y_true[:1000], y_score[:1000], names)  # warm-up (imports, caches)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = f1_thresholds(y_true, y_score, names)
        times.append(time.perf_counter() - started)
    return {
        "rows": rows,
        "labels": labels,
        "repeat": repeat,
        "best_s": round(min(times), 3),
        "median_s": round(statistics.median(times), 3),
        "cells_per_s": round(rows * labels / min(times)),
        "fallbacks": len(result.fallbacks),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    result = bench_thresholds(args.rows, args.labels, args.repeat)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "thresholds.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
