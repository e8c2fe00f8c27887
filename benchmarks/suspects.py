"""Suspected label errors: plant label flips in a dev set, train, and score the suspects ranking vs cleanlab.

For each data set folder (`images/` + `labels.csv`), flip scheme and seed, `--share` of the images
(5 %), drawn with numpy's generator seeded by the seed, get flips (`plant()`):
- `one`: one flip per image, alternately *missing* (a given label deleted) and *wrong* (a label the
  image lacks added), the label drawn uniformly;
- `swap`: one given label replaced by one the image lacks (a missing and a wrong pair on the same
  image, the label count kept: an annotator who picked the wrong class).
The default recipe is trained on the flipped CSV (`fit()`, `TrainConfig(seed=seed)`, features from
`--cache-dir`, so only the first run is cold; the records of each run are cached there too, keyed by
data set, seed, share, scheme and the default config: `--retrain` ignores them) and the stored
records give one held-out score per (image, label): the out-of-fold score for train images, the
model's score for validation images (`best`), and the model's thresholds. On those same scores:

- ours: `service.inspect.suspects.rank` ((image, label) pairs; at the image level an image counts
  where its first pair does), also with `count_prior=1`; `v1` is the first version (the logit margin
  past the threshold alone);
- `gap`: `mislabel_candidates`' order, |given - score| per pair (>= 0.5);
- cleanlab 2.9.0 with its defaults: `multilabel_classification.rank.get_label_quality_scores`
  (images, ascending), `filter.find_label_issues(return_indices_ranked_by="self_confidence")` (its
  issue list, in its order; shorter than k counts as misses), and at the pair level
  `rank.get_label_quality_scores_per_class` (ascending).

A flipped image (pair) is a true issue; everything else is not, although the dev sets have real
annotation errors of their own, which every method is charged for alike. Reported per method:
precision of the top k for k = K (the number of flipped images, or pairs), 50 and 100, and the share
of the K flips found in the top 2K; mean ± standard deviation over the seeds.

cleanlab is a benchmark-only tool, never a project dependency: `--setup-cleanlab` pip-installs
`cleanlab==2.9.0` into the running environment when it is missing (else the script stops and says so).

    .venv/bin/python benchmarks/suspects.py ../shared/data/voc5_natural_dev \\
        ../shared/data/clothing_mosaic_ml10 --schemes one swap --seeds 0 1 2 3 4 --setup-cleanlab
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # fit()'s progress bars
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="manylabel-bench-bentoml-"))

from suspects_rank import evaluate  # noqa: E402

from service.inspect import suspects  # noqa: E402

CLEANLAB = "cleanlab==2.9.0"


def read_labels(csv_path: Path) -> tuple[list[str], list[set[str]]]:
    """The no-header CSV: file name, then its labels."""
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and r[0].strip()]
    return [r[0].strip() for r in rows], [{c.strip() for c in r[1:] if c.strip()} for r in rows]


def plant(
    labels: list[set[str]], share: float, seed: int, scheme: str = "one"
) -> tuple[list[set[str]], list[tuple[int, str, str]]]:
    """Flipped copies of `labels` and the flips [(row, label, kind)].

    `one`: each chosen image gets one flip, alternately a deleted given label (missing) and an added
    absent one (wrong). `swap`: each chosen image has one given label replaced by one it lacks (both
    kinds on one image, its label count kept: an annotator picking the wrong class).
    """
    rng = np.random.default_rng(seed)
    vocab = sorted(set().union(*labels))
    chosen = rng.permutation(len(labels))[: round(share * len(labels))]
    noisy, flips = [set(s) for s in labels], []
    for i, row in enumerate(chosen):
        given, absent = sorted(labels[row]), [v for v in vocab if v not in labels[row]]
        if scheme == "swap":
            kinds = ["missing", "wrong"] if given and absent else []
        else:
            kinds = ["missing" if (i % 2 == 0 and given) or not absent else "wrong"]
        for kind in kinds:
            label = str(rng.choice(given if kind == "missing" else absent))
            (noisy[row].discard if kind == "missing" else noisy[row].add)(label)
            flips.append((int(row), label, kind))
    return noisy, flips


def train(folder: Path, names: list[str], noisy: list[set[str]], seed: int, cache: Path) -> dict:
    """fit() on the flipped CSV; (names, labels, y, held-out scores p, thresholds) from its records."""
    from service.inspect.records import ModelRecords
    from training.config import TrainConfig
    from training.fit import fit

    extra = {"int8": "off"} if "int8" in {f.name for f in dataclasses.fields(TrainConfig)} else {}
    cfg = TrainConfig(name=f"suspects-{folder.name}".replace("_", "-"), seed=seed, cache_dir=cache, **extra)
    with tempfile.TemporaryDirectory(prefix="manylabel-suspects-") as tmp:
        csv_path = Path(tmp) / "labels.csv"
        csv_path.write_text(
            "".join(",".join([n, *sorted(s)]) + "\n" for n, s in zip(names, noisy, strict=True))
        )
        started = time.perf_counter()
        result = fit(folder / "images", csv_path, cfg, say=lambda _: None)
        seconds = time.perf_counter() - started
    rec = ModelRecords.load(result.stored.path, result.manifest)
    oof = rec.oof["best"]
    p = np.where(np.isfinite(oof), oof, rec.scores["best"]).astype(np.float64)
    thresholds = np.asarray(result.manifest.models["best"].thresholds, np.float64)
    return {
        "names": rec.names,
        "labels": np.array(rec.labels),
        "y": rec.y_true,
        "p": p,
        "thresholds": thresholds,
        "fit_s": np.float64(seconds),
    }


def run_records(folder: Path, seed: int, share: float, scheme: str, cache: Path, retrain: bool) -> dict:
    """The flips and the trained records of one (data set, seed, scheme), cached under `cache`/suspects."""
    from training.config import TrainConfig

    key = json.dumps([folder.name, seed, share, scheme, TrainConfig().to_json()])
    path = cache / "suspects" / f"{folder.name}-{seed}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    names, labels = read_labels(folder / "labels.csv")
    noisy, flips = plant(labels, share, seed, scheme)
    trained = retrain or not path.is_file()
    if trained:
        out = train(folder, names, noisy, seed, cache)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **out)
    with np.load(path) as npz:
        out = {k: npz[k] for k in npz.files}
    row = {str(n): i for i, n in enumerate(out["names"])}
    col = {str(label): j for j, label in enumerate(out["labels"])}
    truth = np.zeros(out["y"].shape, bool)
    for r, label, _ in flips:
        if names[r] in row:  # an unreadable image is not in the records
            truth[row[names[r]], col[label]] = True
    return {**out, "truth": truth, "kinds": [k for _, _, k in flips], "trained": trained}


# --- the report ----------------------------------------------------------------------------------------

COLUMNS = ("p@K", "p@50", "p@100", "recall@2K", "listed")


def summarise(runs: list[dict]) -> dict:
    """Mean and std over seeds of every (data set, level, method, metric)."""
    table: dict = {}
    for run in runs:
        for level, methods in run["scores"].items():
            for method, metrics in methods.items():
                cell = table.setdefault(run["set"], {}).setdefault(level, {}).setdefault(method, {})
                for m, v in metrics.items():
                    cell.setdefault(m, []).append(v)
    return {
        ds: {
            lv: {
                me: {m: [float(np.mean(v)), float(np.std(v))] for m, v in ms.items()}
                for me, ms in lvs.items()
            }
            for lv, lvs in levels.items()
        }
        for ds, levels in table.items()
    }


def markdown(summary: dict, runs: list[dict]) -> str:
    lines = [
        "| data set, flips (seeds) | level | method | K | " + " | ".join(COLUMNS) + " |",
        "|---|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, levels in summary.items():
        head = f"{name} ({sum(r['set'] == name for r in runs)})"
        for level, methods in levels.items():
            for method, ms in methods.items():
                cells = [
                    f"{ms[c][0]:.0f}" if c == "listed" else f"{ms[c][0]:.3f} ± {ms[c][1]:.3f}"
                    for c in COLUMNS
                ]
                lines.append(
                    f"| {head} | {level} | {method} | {ms['K'][0]:.0f} | " + " | ".join(cells) + " |"
                )
    return "\n".join(lines)


def ensure_cleanlab(setup: bool) -> None:
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        if not setup:
            sys.exit(
                f"cleanlab is missing: pip install {CLEANLAB} (or pass --setup-cleanlab); "
                "it is a benchmark tool, never a project dependency"
            )
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", CLEANLAB], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--share", type=float, default=0.05, help="share of the images given flips")
    parser.add_argument(
        "--schemes",
        nargs="+",
        default=["one"],
        choices=["one", "swap"],
        help="how flips are planted: plant()",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/manylabel-bench-cache"))
    parser.add_argument("--retrain", action="store_true", help="train again even when records are cached")
    parser.add_argument("--setup-cleanlab", action="store_true", help=f"pip install {CLEANLAB} when missing")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    ensure_cleanlab(args.setup_cleanlab)
    import cleanlab

    runs, load, started = [], os.getloadavg()[0], time.perf_counter()
    for scheme in args.schemes:
        for folder in args.datasets:
            for seed in args.seeds:
                d = run_records(folder, seed, args.share, scheme, args.cache_dir, args.retrain)
                kinds = {k: d["kinds"].count(k) for k in suspects.KINDS}
                run = {"set": f"{folder.name}, {scheme}", "seed": seed, "flips": kinds, "images": len(d["y"])}
                runs.append(
                    {**run, "fit_s": float(d["fit_s"]), "trained": d["trained"], "scores": evaluate(d)}
                )
                print(f"{run['set']} seed {seed}: flips {kinds}, fit {float(d['fit_s']):.1f} s")
    summary = summarise(runs)
    machine = {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "cleanlab": cleanlab.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_at_start": load,
        "seconds": round(time.perf_counter() - started, 1),
        "fits_this_run": sum(r["trained"] for r in runs),  # the others' records came from --cache-dir
    }
    setup = {
        "share": args.share,
        "schemes": args.schemes,
        "seeds": args.seeds,
        "which": "best",
        "recipe": "TrainConfig(seed=seed), otherwise the defaults",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine, "setup": setup, "summary": summary, "runs": runs}
    (args.out / "suspects.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(summary, runs)
    note = (
        f"{machine['date']}, {machine['cpus']} cores, cleanlab {machine['cleanlab']}; {args.share:.0%} "
        f"of the images flipped, seeds {args.seeds}; trained in this run: {machine['fits_this_run']} of "
        f"{len(runs)} (the rest from the records cached in --cache-dir). Mean ± standard deviation.\n\n"
    )
    (args.out / "suspects.md").write_text(note + table + "\n")
    print(json.dumps(machine))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
