"""`manylabel batch`: a thin CLI over `service.batch.client.run_batch`.

`register(subparsers)` adds the subcommand to the one `manylabel` parser (`service.cli`).
Exit codes: 0 every image answered; 1 some images refused (4xx, unreadable, too large); 2 bad options,
the service's refusal of them included; 75 the service stayed unavailable or some images failed
transiently, and 130 interrupted: rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from service.batch.client import BatchError, BatchOptions, RetryPolicy, Shard, Summary, run_batch
from service.thresholds import parse_overrides

SHOWN_FAILURES = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `batch` subcommand."""
    p = subparsers.add_parser(
        "batch",
        help="score a large folder through a running service, resumably",
        description="Send every image under --images to a manylabel service and write the predictions. "
        "A journal in --output makes a rerun resume where a crash, a dead server or Ctrl-C left off.",
    )
    p.add_argument("--url", required=True, help="service base URL, e.g. http://localhost:3000")
    p.add_argument(
        "--images", required=True, type=Path, help="folder of images (walked recursively) or one image"
    )
    p.add_argument(
        "--output", required=True, type=Path, help="folder for journal.jsonl and predictions.<format>"
    )
    p.add_argument(
        "--format", choices=("json", "csv", "zip"), default="json", help="final file (default json)"
    )
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--per-request", type=int, default=4, help="images per request (default 4)")
    p.add_argument(
        "--shard", type=Shard.parse, default=Shard(), help="I/N: this client takes shard I of N (default 0/1)"
    )
    p.add_argument(
        "--which",
        choices=("best", "last"),
        default="best",
        help="the model's best or last export (default best)",
    )
    p.add_argument(
        "--model", metavar="NAME[:VERSION]", help="a stored model (default: the one the service serves)"
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "int8"),
        default="auto",
        help="the graph that scores: auto (the service's default for the model: int8 on CPU when it has "
        "a validated int8 variant), fp32 or int8 (refused for a model without one) (default auto)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="one threshold for every label, in [0, 1]")
    group.add_argument("--thresholds", help="JSON object label -> threshold, e.g. '{\"cat\": 0.4}'")
    p.add_argument(
        "--max-retries", type=int, default=7, help="retries per request on 503/429/connection errors"
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    p.add_argument(
        "--max-file-bytes",
        type=int,
        help="larger files are recorded as failed, unread (default: the service's max_request_bytes)",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="also resend images an earlier run saw refused"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    p.set_defaults(func=run_batch_cli)


def run_batch_cli(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    options = _options(args)
    bar = None
    state = {"skipped": 0, "failed": 0}

    def on_start(to_send: int, skipped: int) -> None:
        nonlocal bar
        state["skipped"] = skipped
        bar = tqdm(total=to_send, unit="img", dynamic_ncols=True, disable=args.no_progress, smoothing=0.05)
        bar.set_postfix(state, refresh=False)

    def progress(answered: int, failed: int) -> None:
        assert bar is not None
        if failed:
            state["failed"] += failed
            bar.set_postfix(state, refresh=False)
        bar.update(answered + failed)

    try:
        summary = run_batch(options, on_start=on_start, progress=progress)
    except KeyboardInterrupt:  # before or after sending (counting, final file): nothing is lost
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    print(format_summary(summary), file=sys.stderr)
    return summary.exit_code


def _options(args: argparse.Namespace) -> BatchOptions:
    thresholds = parse_overrides("--thresholds", args.thresholds)
    if args.max_retries < 0 or args.timeout <= 0:
        raise BatchError("--max-retries must be >= 0 and --timeout > 0")
    return BatchOptions(
        url=args.url.rstrip("/"),
        images=args.images,
        output=args.output,
        format=args.format,
        concurrency=args.concurrency,
        per_request=args.per_request,
        shard=args.shard,
        which=args.which,
        model=args.model,
        precision=args.precision,
        threshold=args.threshold,
        thresholds=thresholds,
        retry=RetryPolicy(attempts=args.max_retries + 1),
        timeout_s=args.timeout,
        retry_failed=args.retry_failed,
        max_file_bytes=args.max_file_bytes,
    )


def format_summary(summary: Summary) -> str:
    rate = summary.done / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    lines = [
        f"{summary.total} images in this shard: {summary.done} answered now ({rate:.1f} img/s over "
        f"{summary.elapsed_s:.1f} s), {summary.skipped} skipped as already done, {len(summary.failed)} failed"
    ]
    if summary.failed:
        reasons = Counter(_short(reason) for reason in summary.failed.values())
        lines += [f"  {count} x {reason}" for reason, count in reasons.most_common(SHOWN_FAILURES)]
        refused = [(name, reason) for name, reason in summary.failed.items() if name not in summary.transient]
        lines += [f"  failed: {name}: {reason}" for name, reason in refused[:SHOWN_FAILURES]]
        if len(refused) > SHOWN_FAILURES:
            lines.append(f"  ... and {len(refused) - SHOWN_FAILURES} more (kind 'failed' in the journal)")
        if summary.transient:
            lines.append(f"  {len(summary.transient)} failed transiently: a rerun retries them")
    if len(summary.versions) > 1:
        lines.append(f"warning: several model versions answered: {', '.join(summary.versions)}")
    if summary.stopped:
        lines.append(
            f"stopped early, the service stayed unavailable ({summary.stopped}): "
            "rerun the same command to resume"
        )
    if summary.interrupted:
        lines.append("interrupted: what was answered is in the journal; rerun the same command to resume")
    elif summary.output is not None:
        lines.append(f"predictions: {summary.output}")
    return "\n".join(lines)


def _short(reason: str) -> str:
    """A reason without its file name, to group failures by cause."""
    return reason.split(":", 2)[0] if reason.startswith("HTTP ") else reason.split(":", 1)[0]
