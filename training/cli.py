"""`manylabel train` and `manylabel demo`, registered on the one `manylabel` parser (service/cli.py).

Registered only where torch and this package are importable; elsewhere the root answers both
commands with the install hint.
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
import typing
from dataclasses import fields
from pathlib import Path

from training.config import TrainConfig  # no torch: the root parser stays instant

SAMPLE = "sample"


def add_config_args(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (`max_epochs` -> `--max-epochs`), default and help from the field."""
    hints = typing.get_type_hints(TrainConfig)  # the annotations are strings (`from __future__`)
    defaults = TrainConfig()
    groups = {}
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        exclusive = meta.pop("exclusive", None)
        if exclusive and exclusive not in groups:
            groups[exclusive] = p.add_mutually_exclusive_group()
        target = groups[exclusive] if exclusive else p
        default = getattr(defaults, f.name)
        # argparse %-formats help: escape the field's own text, then let it show the live default
        # (`demo` overrides some with set_defaults).
        meta["help"] = meta["help"].replace("%", "%%")
        if default not in (None, []):
            meta["help"] += " (default %(default)s)"
        target.add_argument(flag(f.name), default=default, **_argparse_type(hints[f.name]), **meta)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argparse_type(hint: object) -> dict:
    """argparse options for a field's type: float/int/str/Path, Optional[...], Literal, list[str]."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union) and len(args) == 1:  # X | None: the flag is optional
        return _argparse_type(args[0])
    if origin is typing.Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin is list and args:
        return {"nargs": "+", **_argparse_type(args[0])}
    if hint in (str, int, float, Path):
        return {"type": hint}
    raise TypeError(f"TrainConfig field of type {hint!r} has no command-line form; add one here")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: copy.copy(getattr(args, f.name)) for f in fields(TrainConfig)})


def cmd_train(args: argparse.Namespace) -> int:
    from service.tables import print_summary
    from training.fit import fit

    images = args.images[0] if len(args.images) == 1 else args.images  # a folder, a zip, or files
    result = fit(images, args.labels, config_from_args(args), say=print)
    print_summary(result, say=print)
    return 0


def sample_dir() -> Path:
    return Path(__file__).resolve().parent / SAMPLE


def cmd_demo(args: argparse.Namespace) -> int:
    """Train on the bundled sample, then predict on it in-process."""
    from service.tables import print_summary
    from training.fit import fit

    sample = sample_dir()
    args.images, args.labels = sample / "images", sample / "labels.csv"
    print(f"training on the bundled sample in {sample}")
    result = fit(args.images, args.labels, config_from_args(args), say=print)
    print_summary(result, say=print)
    from service.cli import main as manylabel  # the served `predict` path, through the one CLI root

    images = sorted(args.images.glob("*.jpg"))[:5]
    print(f"\npredictions of {result.stored.tag} (best model) for {len(images)} sample images, as CSV:")
    sys.stdout.flush()
    argv = ["predict", "--model", result.stored.tag, "--images", *map(str, images)]
    if manylabel([*argv, "--format", "csv", "--output", "-"]) != 0:
        return 1
    print(f"\nserve it:  manylabel serve {result.stored.name}   (then open http://127.0.0.1:3000/ui)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `train` and `demo` to the `manylabel` parser (service/cli.py)."""
    p = sub.add_parser("train", help="train best/last models from images + labels CSV")
    p.add_argument("--images", required=True, nargs="+", help="a folder, a .zip, or image files")
    p.add_argument("--labels", required=True, type=Path, help="labels CSV (file name, then labels)")
    add_config_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("demo", help="train on the bundled sample and predict")
    add_config_args(p)
    p.set_defaults(func=cmd_demo, minutes=1.0)
