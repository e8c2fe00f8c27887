"""Serving benchmark: manylabel over HTTP against the in-process limit and against peer servers.

    BENTOML_HOME=... python benchmarks/serve.py --model NAME --images DIR [DIR ...] --out benchmarks/results

Every target serves the same fused ONNX model (best.onnx of a stored manylabel model) with the same
preprocessing (`service.preprocess.load_image`) and onnxruntime options (intra-op threads = cores,
pool threads spinning only while a call runs), and answers the same request: multipart POST
/predict, one JPEG in field `images`.
  * in-process: decode + onnxruntime in one Python process, no HTTP (its own process, so its peak
    RSS is its own): `conc` images in flight served by min(conc, cores) threads, batch 1;
  * manylabel: `bentoml serve service.server.service:ManyLabel` with its defaults (adaptive batching);
  * peers (benchmarks/peers/, run with --peers-python): PyTriton (Triton's dynamic batcher),
    LitServe (`max_batch_size` + `batch_timeout`), plain FastAPI (no batching);
  * bare (same venv, a reference): HTTP on a bare uvloop protocol, no framework, one request at a
    time: the floor of serving from Python (benchmarks/peers/bare_server.py).
Every target also runs the model's int8 variant (best.int8.onnx, `--precisions`; rows marked int8):
manylabel with MANYLABEL_PRECISION=int8 (the fp32 rows with MANYLABEL_PRECISION=fp32), the peers with
`--precision int8` (they load the same file), in-process on that file.
The images are resized copies (longest side 256 and 1000 px, JPEG q90) of the photos in --images,
written to a temporary folder. Load: serve_quick's lean asyncio HTTP/1.1 client, closed loop
(each of `conc` connections sends its next request when the previous answer arrives), for
--seconds per cell after a 1 s warm-up per size. Every server is started at the start of a round;
then each (size, concurrency) cell runs on every target back to back (the order alternating), so a
slow stretch of a shared host hits the targets of a cell alike. --rounds rounds (servers restarted)
and each cell keeps its best round: noise only ever slows a run down. A target that fails keeps
its exact error in the results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(p) for p in (HERE, REPO) if str(p) not in sys.path]

from serve_gpu import GPU_PER_REQUEST, gpu_run  # noqa: E402
from serve_report import biggest_gap, markdown  # noqa: E402

# run.py, soak.py and soak_report.py import the machine and process helpers from here.
from serve_setup import (  # noqa: E402, F401
    PRECISIONS,
    TARGETS,
    TITLES,
    WARM_UP_S,
    machine,
    machine_busy_seconds,
    machine_line,
    make_image_sets,
    process_tree,
    result_key,
    start,
    stop,
    tail,
    wait_quiet,
)
from serve_targets import ReferenceTarget, ServerTarget, best_of, reference_worker  # noqa: E402


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
    ap.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=list(PRECISIONS),
        help="int8: also every target on the model's int8 variant (best.int8.onnx), when it has one",
    )
    ap.add_argument("--peers-python", default=default_peers_python(), help="python of the peers' venv")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--wait-quiet", type=float, default=120, help="seconds to wait for an idle machine")
    ap.add_argument("--gpu", action="store_true", help="the GPU run (benchmarks/gpu.sh): manylabel on CUDA")
    ap.add_argument(
        "--per-request", nargs="+", type=int, default=GPU_PER_REQUEST, help="--gpu: images per request"
    )
    ap.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def bench_units(args: argparse.Namespace, manifest) -> list[tuple[str, str]]:
    """(target, precision) pairs to run: every target in fp32, and in int8 when the model has it."""
    units = [(t, "fp32") for t in args.targets] if "fp32" in args.precisions else []
    if "int8" in args.precisions:
        if "int8" in manifest.models["best"].precisions:
            units += [(t, "int8") for t in args.targets]
        else:
            print("the model has no kept int8 variant: int8 rows skipped", file=sys.stderr, flush=True)
    return units


def run_round(
    args: argparse.Namespace,
    r: int,
    units: list[tuple[str, str]],
    sets: dict[str, Path],
    model_dir: Path,
    workdir: Path,
) -> dict[str, dict]:
    """One round: every server started, then each (size, concurrency) cell run on every target back
    to back, so a slow stretch of the host hits the targets of a cell alike; the order alternates
    between cells and rounds, so no target always runs first or after the same one."""
    data = {name: [p.read_bytes() for p in sorted(folder.glob("*.jpg"))] for name, folder in sets.items()}
    targets = {}
    for target, precision in units:
        if target == "in-process":
            targets[result_key(target, precision)] = ReferenceTarget(args, sets, model_dir, precision)
        else:
            targets[result_key(target, precision)] = ServerTarget(
                target, args, data, model_dir, workdir, precision
            )
    try:
        k = 0
        for name in sets:
            for t in targets.values():
                t.warm_up(name)
            for conc in args.concurrency:
                keys = list(targets) if (r + k) % 2 == 0 else list(targets)[::-1]
                for key in keys:
                    targets[key].cell(name, conc)
                k += 1
    finally:
        results = {key: t.finish() for key, t in targets.items()}
    for key, result in results.items():
        if "error" in result:
            print(f"{key}: {result['error']}", file=sys.stderr, flush=True)
    return results


def run(args: argparse.Namespace) -> dict:
    from service.store import load_model

    m = machine()
    stored = load_model(args.model)
    busy_before = wait_quiet(args.wait_quiet)
    workdir = Path(tempfile.mkdtemp(prefix="manylabel-bench-serve-"))
    try:
        sets = make_image_sets(args.images, args.sizes, args.limit, workdir / "images")
        units = bench_units(args, stored.manifest)
        rounds = [run_round(args, r, units, sets, stored.path, workdir) for r in range(args.rounds)]
        results = {key: best_of([rd[key] for rd in rounds]) for key in rounds[0]}
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
            "precisions": sorted({p for t, p in units}, key=PRECISIONS.index),
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
        worker = reference_worker(
            args.model_dir, args.images, args.concurrency, args.seconds, args.precisions[0]
        )
        print(json.dumps(worker))
        return 0
    if not args.model:
        raise SystemExit("--model NAME is required (a model in the BentoML store at BENTOML_HOME)")
    if args.gpu:
        gpu_run(args)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
