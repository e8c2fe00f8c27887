"""`manylabel predict` and `manylabel serve`: thin CLIs over the predictor and `bentoml serve`.

`register(subparsers)` adds both to the main `manylabel` parser; `python -m service.server.cli` runs them
alone (no torch, no training code needed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from service.errors import ManylabelError

SERVICE_IMPORT = "service.server.service:ManyLabel"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `predict` and `serve` subcommands."""
    p = subparsers.add_parser(
        "predict",
        help="score images in-process, no server (same code and scores as the service)",
        description="Score images with a stored model and write json, csv or zip predictions.",
    )
    p.add_argument("--model", required=True, help="model name in the BentoML store (NAME or NAME:VERSION)")
    p.add_argument("--version", default=None, help="store version (default: latest)")
    p.add_argument("--which", choices=("best", "last"), default="best", help="which exported model")
    p.add_argument("--images", nargs="+", required=True, type=Path, help="image files, folders or .zip files")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="one threshold for every label, in [0, 1]")
    group.add_argument("--thresholds", help="JSON object label -> threshold, e.g. '{\"cat\": 0.4}'")
    p.add_argument("--format", choices=("json", "csv", "zip"), default="json")
    p.add_argument("--output", required=True, help="output file, or - for stdout (json and csv)")
    p.add_argument("--provider", choices=("auto", "cpu", "cuda"), default=None, help="onnxruntime provider")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "int8"),
        default=None,
        help="graph to score with (auto: int8 on CPU when the model has a kept int8 variant, else fp32)",
    )
    p.set_defaults(func=run_predict)

    s = subparsers.add_parser(
        "serve",
        help="start the HTTP service (bentoml serve)",
        description="Serve a stored model over HTTP; MANYLABEL_* variables tune it (service/settings.py).",
    )
    s.add_argument(
        "name", nargs="?", default=None, help="default model ($MANYLABEL_MODEL, else the newest stored)"
    )
    s.add_argument("--version", default=None, help="store version (default: latest)")
    s.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine; 0.0.0.0: all)"
    )
    s.add_argument("--port", type=int, default=3000)
    s.add_argument("--provider", choices=("auto", "cpu", "cuda"), default=None)
    s.add_argument("--precision", choices=("auto", "fp32", "int8"), default=None, help="MANYLABEL_PRECISION")
    s.add_argument("--max-batch-size", type=int, default=None, help="images per onnxruntime call")
    s.add_argument("--max-latency-ms", type=float, default=None, help="longest wait for batch-mates")
    s.set_defaults(func=run_serve)


def run_predict(args: argparse.Namespace) -> int:
    """`manylabel predict`: the service's own `answer` path, in this process, no server."""
    import asyncio

    from service.files import atomic_writer
    from service.server.answer import BundleOptions, answer
    from service.server.http.uploads import Limits, read_local_images
    from service.server.predictor import Predictor
    from service.server.settings import Settings
    from service.thresholds import parse_overrides

    if args.output == "-" and args.format == "zip":
        raise ManylabelError("--output - (stdout) is for json and csv; give a file name for a zip")
    overrides = parse_overrides("--thresholds", args.thresholds)
    env = {k: v for k, v in os.environ.items() if k.startswith("MANYLABEL_")}
    if args.provider:
        env["MANYLABEL_PROVIDER"] = args.provider
    if args.precision:  # only that precision's sessions are opened
        env["MANYLABEL_PRECISION"] = args.precision
    # A local run writes the bundle to a file as it is made: no size cap, as no request waits on it.
    settings = Settings.from_env(env).model_copy(update={"max_bundle_bytes": 1 << 62})
    options = BundleOptions.checked(
        {"which": args.which, "threshold": args.threshold, "thresholds": overrides, "format": args.format}
    )
    limits = Limits(max_files=10**9, max_request_bytes=2**62, max_zip_bytes=settings.max_zip_bytes)
    files = read_local_images(args.images, limits)
    predictor = Predictor.load(args.model, args.version, settings)
    try:
        reply = asyncio.run(answer(predictor, options, files))
    finally:
        predictor.close()
    if reply.status != 200:
        raise ManylabelError(json.loads(reply.read()).get("error", f"HTTP {reply.status}"))
    if args.output == "-":
        sys.stdout.buffer.write(reply.read())
    else:
        with atomic_writer(Path(args.output)) as out:
            for chunk in reply.stream.chunks():
                out.write(chunk)
        print(f"{len(files)} images -> {args.output} ({args.format})")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    for key, value in {
        "MANYLABEL_MODEL": args.name,
        "MANYLABEL_VERSION": args.version,
        "MANYLABEL_PROVIDER": args.provider,
        "MANYLABEL_PRECISION": args.precision,
        "MANYLABEL_MAX_BATCH_SIZE": args.max_batch_size,
        "MANYLABEL_MAX_LATENCY_MS": args.max_latency_ms,
    }.items():
        if value is not None:
            env[key] = str(value)
    return exec_serve(SERVICE_IMPORT, args.host, args.port, env)


def exec_serve(service: str, host: str, port: int, env: dict[str, str]) -> int:
    """Become `bentoml serve SERVICE`: signals (Ctrl-C, SIGTERM from Kubernetes) reach it directly."""
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or shutil.which("bentoml")
    if bentoml is None:
        raise ManylabelError("the bentoml command is not installed in this environment")
    root = Path(__file__).resolve().parents[2]  # where the `service` package lives
    cmd = [bentoml, "serve", service, "--host", host, "--port", str(port), "--working-dir", str(root)]
    print(" ".join(cmd), file=sys.stderr)
    sys.stderr.flush()
    os.execve(bentoml, cmd, env)
    return 0  # pragma: no cover - execve does not return
