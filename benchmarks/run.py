"""The whole CPU benchmark suite: training, feature extraction, threshold search, serving.

    .venv/bin/python benchmarks/run.py DATASET_DIR [DATASET_DIR ...] [--setup-peers]

Each DATASET_DIR holds `images/` and `labels.csv` (e.g. shared/data/voc5_natural_dev and
shared/data/clothing_mosaic_ml10). Steps, each its own script writing its JSON to --out:
  1. benchmarks/train.py: cold and warm training on every data set (the models land in a temporary
     BentoML store, so nothing outside the run is needed or touched);
  2. benchmarks/features.py: feature extraction images/s, manylabel vs raw onnxruntime;
  3. benchmarks/thresholds.py: f1_thresholds on 100 000 x 100 random scores;
  4. benchmarks/serve.py: the model trained on the first data set, served by manylabel, the
     in-process reference, the peers and the bare-HTTP floor, on photos of the first data set
     resized to 256 and 1000 px.
Then --out/results.md (all tables, the machine, the command) is written and copied into
benchmarks/README.md between its `latest` markers. `--steps` reruns some steps only (say, after
another job polluted one: each step records how many cores other processes kept busy meanwhile);
the others keep their last results from --out. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from serve import (  # noqa: E402
    TITLES,
    default_peers_python,
    machine,
    machine_busy_seconds,
    machine_line,
    wait_quiet,
)
from serve import markdown as serve_markdown  # noqa: E402

README = HERE / "README.md"
MARKERS = ("<!-- latest:start -->", "<!-- latest:end -->")
STEPS = ("train", "features", "thresholds", "serve")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def step(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> dict:
    """Run one step, its output to logs/NAME.log; raise with the log's tail when it fails.

    Returns its wall time and the cores that *other* processes kept busy meanwhile (machine CPU
    time minus this step's), so a polluted step shows in the results.
    """
    print(f"== {name}: {shlex.join(cmd)}", flush=True)
    started, machine_cpu, own_cpu = time.perf_counter(), machine_busy_seconds(), children_cpu_seconds()
    log = logs / f"{name}.log"
    with log.open("wb") as sink:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"{name} failed (exit {done.returncode}) after {seconds:.0f} s:\n{tail}")
    other = machine_busy_seconds() - machine_cpu - (children_cpu_seconds() - own_cpu)
    result = {"seconds": round(seconds, 1), "other_cores": round(max(other, 0.0) / seconds, 2)}
    print(f"   {result['seconds']:.0f} s, other processes {result['other_cores']:.2f} cores", flush=True)
    return result


def setup_peers(python: str) -> None:
    """Create the peers' venv when missing. Debian's /usr/bin/python3 where there is one: PyTriton's
    Python backend stub links the system libpython3.11, which must match the venv's standard library."""
    if Path(python).exists():
        return
    venv = Path(python).parent.parent
    base = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    print(f"== peers: creating {venv} with {base}", flush=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "-r", str(HERE / "requirements-peers.txt")]
    subprocess.run(pip, check=True)


def features_table(rows: list[dict]) -> str:
    lines = [
        "| data set | images | manylabel img/s | raw onnxruntime img/s | ours/raw | same features |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['images']} | {r['manylabel_images_per_s']} | {r['raw_images_per_s']} "
            f"| {r['ratio']:.2f} | {'yes' if r['same_features'] else 'NO'} |"
        )
    return "\n".join(lines)


def gap_line(serve: dict) -> str:
    gap = serve.get("biggest_gap")
    if not gap:
        return "Biggest serving gap: not computed (manylabel did not run)."
    return (
        f"Biggest serving gap: manylabel reaches {gap['ratio']:.2f}x the images/s of {TITLES[gap['vs']]} "
        f"at {gap['set']}, concurrency {gap['concurrency']}."
    )


def report(out: Path, suite: dict) -> str:
    serve = json.loads((out / "serve.json").read_text())
    thr = json.loads((out / "thresholds.json").read_text())
    feats = json.loads((out / "features.json").read_text())
    train_md = (out / "train.md").read_text().strip()
    steps = suite["steps"]
    total = sum(v["seconds"] for v in steps.values())
    parts = ", ".join(f"{k} {v['seconds']:.0f} s ({v['other_cores']:.2f})" for k, v in steps.items())
    return "\n".join(
        [
            f"Machine: {machine_line(suite['machine'])}.",
            f"Command: `{suite['command']}`.",
            f"Whole suite {total:.0f} s: {parts}; in brackets: cores other processes kept busy meanwhile.",
            "",
            serve_markdown(serve),
            "",
            gap_line(serve),
            "",
            "Training (cold: empty feature cache; warm: cached features; seconds):",
            "",
            train_md,
            "",
            "Feature extraction (cold feature pass):",
            "",
            features_table(feats),
            "",
            f"Threshold search: `f1_thresholds` on {thr['rows']:,} x {thr['labels']} random scores: "
            f"{thr['best_s']:.2f} s (best of {thr['repeat']}, median {thr['median_s']:.2f} s).",
        ]
    )


def update_readme(text: str) -> None:
    if not README.exists():
        return
    body = README.read_text()
    start, end = MARKERS
    if start not in body or end not in body:
        return
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    README.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", body))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", type=Path, help="folders holding images/ and labels.csv")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--minutes", type=float, default=5.0, help="train.py head-training budget")
    ap.add_argument("--seconds", type=float, default=4.0, help="serving: seconds per cell and round")
    ap.add_argument("--rounds", type=int, default=2, help="serving: rounds over all targets (best kept)")
    ap.add_argument("--feature-images", type=int, default=400, help="images per data set for features.py")
    ap.add_argument("--peers-python", default=default_peers_python())
    ap.add_argument("--setup-peers", action="store_true", help="create the peers' venv if it is missing")
    ap.add_argument("--wait-quiet", type=float, default=120, help="seconds to wait for an idle machine")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="run only these")
    ap.add_argument("--model", help="serve this model from $BENTOML_HOME instead of the one trained here")
    ap.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    args = ap.parse_args()

    if args.setup_peers:
        setup_peers(args.peers_python)
    command = shlex.join([".venv/bin/python", "benchmarks/run.py", *sys.argv[1:]])
    busy = wait_quiet(args.wait_quiet)
    m = machine()
    m["busy_cores_at_start"] = busy
    print(f"machine: {machine_line(m)}", flush=True)
    if busy >= 0.25:
        print("warning: other work keeps the CPU busy; it will pollute the numbers", flush=True)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="manylabel-bench-"))
    env = {
        **os.environ,
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    if not args.model:  # train.py's models go to a store of this run's own
        env["BENTOML_HOME"] = str(scratch / "bentoml")
        if "serve" in args.steps and "train" not in args.steps:
            raise SystemExit("--steps serve without train needs --model NAME (a model in $BENTOML_HOME)")
    py = sys.executable
    data = [str(d.resolve()) for d in args.datasets]
    first = args.datasets[0].resolve()
    commands = {
        "train": [py, "benchmarks/train.py", *data, "--minutes", str(args.minutes), "--out", str(out)],
        "features": [
            py,
            "benchmarks/features.py",
            *data,
            "--limit",
            str(args.feature_images),
            "--out",
            str(out),
        ],
        "thresholds": [py, "benchmarks/thresholds.py", "--out", str(out)],
        "serve": [
            py,
            "benchmarks/serve.py",
            "--model",
            args.model or first.name.replace("_", "-").lower(),  # the name train.py gives it
            "--images",
            str(first / "images"),
            "--seconds",
            str(args.seconds),
            "--rounds",
            str(args.rounds),
            "--peers-python",
            args.peers_python,
            "--wait-quiet",
            str(args.wait_quiet),
            "--out",
            str(out),
        ],
    }
    # Steps not run now keep their last results (and timings) from --out.
    previous = out / "suite.json"
    suite = json.loads(previous.read_text()) if previous.exists() and set(args.steps) != set(STEPS) else {}
    suite = {"machine": m, "command": command, "steps": suite.get("steps", {})}
    for name in STEPS:
        if name in args.steps:
            suite["steps"][name] = {**step(name, commands[name], env, scratch), "date": m["date"]}
    if "serve" in args.steps:
        # Server processes that end orphaned escape RUSAGE_CHILDREN and would count as "other":
        # serve.py measures other processes per cell instead; keep its worst cell.
        cells = json.loads((out / "serve.json").read_text())["results"].values()
        others = [c.get("other_cores", 0.0) for r in cells for c in r.get("cells", [])]
        suite["steps"]["serve"]["other_cores"] = max(others, default=0.0)
    text = report(out, suite)
    (out / "results.md").write_text(text + "\n")
    (out / "suite.json").write_text(json.dumps(suite, indent=1))
    if not args.no_readme:
        update_readme(text)
    shutil.rmtree(scratch / "bentoml", ignore_errors=True)  # the models trained for the run
    print(text)
    print(f"logs: {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
