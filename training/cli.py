"""`manylabel` command line: a thin layer over importable functions.

Heavy imports (torch, bentoml) happen inside the subcommands, so `manylabel --help` is instant and
the serving subcommands work in an environment without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from service.errors import ManylabelError

SAMPLE = "sample"


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from training.config import TrainConfig

    d = TrainConfig()
    p.add_argument("--name", default=d.name, help="model name in the BentoML store (default %(default)s)")
    p.add_argument(
        "--minutes", type=float, default=d.minutes, help="head-training budget (default %(default)s)"
    )
    p.add_argument("--include", nargs="+", default=[], metavar="LABEL", help="train only these labels")
    p.add_argument("--exclude", nargs="+", default=[], metavar="LABEL", help="leave these labels out")
    val = p.add_mutually_exclusive_group()
    val.add_argument(
        "--val-size", type=float, default=d.val_size, help="validation fraction (default %(default)s)"
    )
    val.add_argument("--val-labels", type=Path, help="labels CSV naming the validation images")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--head", choices=["linear", "mlp"], default=d.head)
    p.add_argument("--max-epochs", type=int, default=d.max_epochs)
    p.add_argument("--patience", type=int, default=d.patience, help="early stop after N epochs (0: never)")
    p.add_argument("--folds", type=int, default=d.folds, help="k for out-of-fold threshold scores")
    p.add_argument("--threshold-source", choices=["oof", "train", "validation"], default=d.threshold_source)
    p.add_argument("--cache-dir", type=Path, help="feature cache (default ~/.cache/manylabel)")
    p.add_argument("--workdir", type=Path, help="keep the run's files here too")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)


def _config(args: argparse.Namespace):
    from training.config import TrainConfig

    return TrainConfig(
        name=args.name,
        minutes=args.minutes,
        include=args.include,
        exclude=args.exclude,
        val_size=args.val_size,
        val_labels=args.val_labels,
        lr=args.lr,
        seed=args.seed,
        head=args.head,
        max_epochs=args.max_epochs,
        patience=args.patience,
        folds=args.folds,
        threshold_source=args.threshold_source,
        cache_dir=args.cache_dir,
        workdir=args.workdir,
        device=args.device,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from training.report import print_summary
    from training.train import fit

    images = args.images[0] if len(args.images) == 1 else args.images  # a folder, a zip, or files
    result = fit(images, args.labels, _config(args), say=print)
    print_summary(result, say=print)
    return 0


def sample_dir() -> Path:
    return Path(__file__).resolve().parent / SAMPLE


def cmd_demo(args: argparse.Namespace) -> int:
    """Train on the bundled sample, then predict on it in-process."""
    from training.report import print_summary
    from training.train import fit

    sample = sample_dir()
    args.images, args.labels = sample / "images", sample / "labels.csv"
    print(f"training on the bundled sample in {sample}")
    result = fit(args.images, args.labels, _config(args), say=print)
    print_summary(result, say=print)
    from service.cli import run_predict

    images = sorted(args.images.glob("*.jpg"))[:5]
    print(f"\npredictions of {result.stored.tag} (best model) for {len(images)} sample images, as CSV:")
    predict = argparse.Namespace(
        model=result.stored.tag,
        version=None,
        which="best",
        images=images,
        threshold=None,
        thresholds=None,
        format="csv",
        output="-",
        provider=None,
    )
    sys.stdout.flush()
    if run_predict(predict) != 0:
        return 1
    print(f"\nserve it:  manylabel serve {result.stored.name}   (then open http://127.0.0.1:3000/ui)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manylabel", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train best/last models from images + labels CSV")
    p.add_argument("--images", required=True, nargs="+", help="a folder, a .zip, or image files")
    p.add_argument("--labels", required=True, type=Path, help="labels CSV (file name, then labels)")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("demo", help="train on the bundled sample and predict")
    _add_train_args(p)
    p.set_defaults(func=cmd_demo, minutes=1.0)
    from service import batch_cli
    from service import cli as service_cli
    from training import inspect_cli

    service_cli.register(sub)
    inspect_cli.register(sub)
    batch_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return args.func(args)
    except ManylabelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was saved to the model store", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
