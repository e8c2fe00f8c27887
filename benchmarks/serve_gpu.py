"""The GPU run of the serving benchmark (benchmarks/gpu.sh -> `serve.py --gpu`): manylabel on CUDA
under closed-loop load with 1 and 16 images per request, the in-process CUDA reference, GPU
utilisation and the batch sizes formed. Part of benchmarks/serve.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(p) for p in (HERE, REPO) if str(p) not in sys.path]

from serve_gpu_probe import GpuSampler, batch_delta, batch_histogram, encode_images  # noqa: E402
from serve_quick import free_port, http_load, tree_cpu_seconds  # noqa: E402
from serve_setup import (  # noqa: E402
    WARM_UP_S,
    machine,
    machine_line,
    make_image_sets,
    peak_rss_mib,
    server_command,
    start,
    stop,
    tail,
)

GPU_CONCURRENCY = [1, 8, 32, 128, 256]
GPU_PER_REQUEST = [1, 16]
CUDA = "CUDAExecutionProvider"
# Past BentoML's max_concurrency (64) and MANYLABEL_MAX_QUEUE (2048 images) a request is answered 503:
# raised so that 256 connections of 16 images each are all served.
GPU_SERVER_ENV = {
    "MANYLABEL_PRECISION": "fp32",  # auto serves fp32 on CUDA anyway: pinned so the rows say what ran
    "MANYLABEL_MAX_QUEUE": "16384",
    "BENTOML_CONFIG_OPTIONS": "services.manylabel.traffic.max_concurrency=1024",
}


_SPEC = None


def _decode_batch(images: list[bytes]) -> np.ndarray:  # in a pool process
    from service.preprocess import load_image

    return np.stack([load_image(data, _SPEC) for data in images])


def _init_decoder(spec) -> None:
    global _SPEC
    _SPEC = spec


def gpu_reference(
    model_dir: Path, manifest, images: list[bytes], seconds: float, provider: str
) -> list[dict]:
    """The in-process limit on the GPU: decode in a process pool (one per core but one), batched
    onnxruntime runs on the main thread; and the inference-only ceiling on pre-decoded batches."""
    from concurrent.futures import ProcessPoolExecutor

    from service.server.runtime import open_session

    spec, inp = manifest.preprocessing, manifest.preprocessing.input_name
    path = model_dir / manifest.models["best"].file
    session, report = open_session(path, provider=provider, intra_op_threads=os.cpu_count() or 1)
    workers = max((os.cpu_count() or 2) - 1, 1)
    cells = []
    with ProcessPoolExecutor(workers, initializer=_init_decoder, initargs=(spec,)) as pool:
        for batch in (16, 64):
            chunks = [
                [images[(i + k) % len(images)] for k in range(batch)] for i in range(0, 8 * batch, batch)
            ]
            decoded = pool.submit(_decode_batch, chunks[0]).result()
            session.run(None, {inp: decoded})  # warm-up at this batch size
            t0, done = time.perf_counter(), 0
            inflight = [pool.submit(_decode_batch, chunks[i % len(chunks)]) for i in range(2 * workers)]
            i = len(inflight)
            while time.perf_counter() - t0 < seconds:
                arrays = inflight.pop(0).result()
                inflight.append(pool.submit(_decode_batch, chunks[i % len(chunks)]))
                i += 1
                session.run(None, {inp: arrays})
                done += len(arrays)
            elapsed = time.perf_counter() - t0
            for f in inflight:
                f.cancel()
            t1, runs = time.perf_counter(), 0
            while time.perf_counter() - t1 < seconds / 2:
                session.run(None, {inp: decoded})
                runs += 1
            inference = runs * batch / (time.perf_counter() - t1)
            cells.append(
                {
                    "batch": batch,
                    "decode_processes": workers,
                    "images_per_s": round(done / elapsed, 1),
                    "inference_only_images_per_s": round(inference, 1),
                    "provider": report.active,
                }
            )
            print("gpu in-process", cells[-1], file=sys.stderr, flush=True)
    return cells


def gpu_cells(
    args, url: str, port: int, images: dict[str, list[bytes]], sampler: GpuSampler, pid: int
) -> list:
    cells = []
    for name, data in images.items():
        for per in args.per_request:
            requests = [
                encode_images(
                    "127.0.0.1", port, [(f"{i}-{k}.jpg", data[(i * per + k) % len(data)]) for k in range(per)]
                )
                for i in range(max(len(data) // per, 8))
            ]
            asyncio.run(http_load("127.0.0.1", port, requests, 8, WARM_UP_S))
            for conc in args.concurrency:
                before, cpu = batch_histogram(url), tree_cpu_seconds(pid)
                t0 = time.time()
                result = asyncio.run(http_load("127.0.0.1", port, requests, conc, args.seconds))
                t1 = time.time()
                n_images = max(result["requests"] * per, 1)
                cell = {
                    "set": name,
                    "images_per_request": per,
                    "concurrency": conc,
                    "images_per_s": round(result["images_per_s"] * per, 1),  # http_load counts requests
                    "requests_per_s": result["images_per_s"],
                    "p50_ms": result["p50_ms"],
                    "p99_ms": result["p99_ms"],
                    "requests": result["requests"],
                    "errors": result.get("errors", 0),
                    "first_error": result.get("first_error"),
                    "server_cpu_ms_per_image": round((tree_cpu_seconds(pid) - cpu) * 1000 / n_images, 2),
                    "batch_size": batch_delta(before, batch_histogram(url)),
                    "gpu": sampler.window(t0, t1),
                }
                cells.append(cell)
                print("gpu manylabel", cell, file=sys.stderr, flush=True)
    return cells


def gpu_run(args: argparse.Namespace) -> dict:
    """manylabel on CUDA (fp32) under closed-loop load, and the in-process CUDA reference."""
    from service.store import load_model

    dry = os.environ.get("GPU_DRY_RUN") == "1"
    m, stored = machine(), load_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="manylabel-bench-gpu-"))
    sampler = GpuSampler(args.out / "nvidia-smi.csv")
    provider = "auto" if dry else "cuda"  # dry: no GPU here; auto falls back to the CPU and says so
    env = {**os.environ, "MANYLABEL_MODEL": args.model, "MANYLABEL_PROVIDER": provider, **GPU_SERVER_ENV}
    env["BENTOML_DO_NOT_TRACK"] = "true"
    try:
        sets = make_image_sets(args.images, args.sizes, args.limit, workdir / "images")
        images = {name: [p.read_bytes() for p in sorted(f.glob("*.jpg"))] for name, f in sets.items()}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = server_command("manylabel", args.model, stored.path, port, "")
        log = workdir / "manylabel.log"
        try:
            proc = start(cmd, env, log, next(iter(images.values()))[0], port)
        except RuntimeError as exc:  # MANYLABEL_PROVIDER=cuda refuses to start when CUDA does not load
            raise SystemExit(f"FAIL: manylabel did not start: {exc}; server log:\n{tail(log, 40)}") from None
        try:
            summary = httpx.get(f"{url}/model", timeout=30).json()
            active = summary["provider"]["active"]
            if active != CUDA and not dry:
                raise SystemExit(
                    f"FAIL: manylabel runs on {active}, not {CUDA} (note: {summary['provider']['note']}); "
                    f"server log:\n{tail(log, 40)}"
                )
            cells = gpu_cells(args, url, port, images, sampler, proc.pid)
            peak = peak_rss_mib(proc.pid)
        finally:
            stop(proc)
        reference = gpu_reference(
            stored.path, stored.manifest, next(iter(images.values())), args.seconds, provider
        )
    finally:
        sampler.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "machine": m,
        "model": stored.tag,
        "dry_run": dry,
        "provider": summary["provider"],
        "precision": summary.get("precision"),
        "serving": summary["serving"],
        "server_env": {k: env[k] for k in ("MANYLABEL_PROVIDER", *GPU_SERVER_ENV)},
        "settings": {
            "sizes": args.sizes,
            "images_per_size": args.limit,
            "concurrency": args.concurrency,
            "images_per_request": args.per_request,
            "seconds_per_cell": args.seconds,
            "warm_up_s": WARM_UP_S,
        },
        "manylabel": {"peak_rss_mib": peak, "cells": cells},
        "in_process": reference,
    }
    (args.out / "gpu.json").write_text(json.dumps(report, indent=1))
    table = gpu_markdown(report)
    (args.out / "gpu.md").write_text(f"{table}\n\nMachine: {machine_line(m)}.\n")
    print(table)
    return report


def gpu_markdown(report: dict) -> str:
    s = report["serving"]
    lines = [
        f"GPU serving{' (DRY RUN on CPU: not a GPU measurement)' if report['dry_run'] else ''}: "
        f"{report['model']} fp32 on {report['provider']['active']}; max batch {s['max_batch_size']}, "
        f"wait {s['max_latency_ms']:g} ms, {s['decode_threads']} decode threads. Closed loop, "
        f"{report['settings']['seconds_per_cell']:g} s per cell; batch = images per onnxruntime call "
        "(mean, from /metrics); GPU = nvidia-smi utilisation mean/max % and memory.",
        "",
        "| images | per request | conc | images/s | p50/p99 ms | batch mean | GPU util % | GPU MiB "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["manylabel"]["cells"]:
        gpu = c["gpu"] or {}
        util = f"{gpu['util_mean']:.0f}/{gpu['util_max']:.0f}" if gpu else "–"
        mean = c["batch_size"]["mean"]
        lines.append(
            f"| {c['set']} | {c['images_per_request']} | {c['concurrency']} | {c['images_per_s']:.1f} | "
            f"{c['p50_ms']:.0f}/{c['p99_ms']:.0f} | {mean if mean is not None else '–'} | {util} | "
            f"{gpu.get('mem_mib', '–')} | {c['errors']} |"
        )
    lines += [
        "",
        "In-process CUDA reference (decode in a process pool, batched runs; inference only: pre-decoded):",
        "",
    ]
    lines += ["| batch | decode processes | images/s | inference only images/s |", "|---|---|---|---|"]
    for r in report["in_process"]:
        lines.append(
            f"| {r['batch']} | {r['decode_processes']} | {r['images_per_s']:.1f} "
            f"| {r['inference_only_images_per_s']:.1f} |"
        )
    lines += ["", f"manylabel peak RSS: {report['manylabel']['peak_rss_mib']:.0f} MiB."]
    return "\n".join(lines)
