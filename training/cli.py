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
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.config import TrainConfig  # no torch: the root parser stays instant

if TYPE_CHECKING:
    from service.manifest import Manifest
    from service.store import StoredModel

SAMPLE = "sample"
RECORDS_FILE = "records.npz"  # training.artifacts.RECORDS (which imports torch): names, split, truth


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


def cmd_quantize(args: argparse.Namespace) -> int:
    """int8 variants for a stored model (one trained before int8, or re-calibrated), as a new version."""
    images = args.images[0] if len(args.images) == 1 else args.images
    stored = quantize_stored(
        args.name,
        images,
        version=args.version,
        labels_csv=args.labels,
        calibration_images=args.calibration_images,
        tolerance=args.tolerance,
        seed=args.seed,
        say=print,
    )
    kept = [w for w, e in stored.manifest.models.items() if "int8" in e.precisions]
    print(f"saved {stored.tag}: int8 for {', '.join(kept) if kept else 'no model (fp32 only)'}")
    return 0


def quantize_stored(
    name: str,
    images: str | Path | Sequence[str | Path],
    *,
    version: str | None = None,
    labels_csv: Path | None = None,
    say: Callable[[str], None] = print,
    **options: Any,
) -> StoredModel:
    """`manylabel quantize`: `training.quantize.add_int8_variants` for a stored model, saved as a new
    version of it (`options`: calibration_images, tolerance, seed).

    The split and the truth come from the model's records.npz (its train images calibrate, its
    validation images check); the files from `images`, the folder, .zip or files it was trained on.
    `labels_csv` replaces records.npz (needed for a model stored without it): every image it names is
    validated on, and a sample of them calibrates. Saved custom thresholds are carried over.
    """
    import shutil
    import tempfile

    from service.custom_thresholds import CUSTOM_THRESHOLDS_FILE
    from service.files import atomic_write_bytes
    from service.store import load_model, save_model
    from training.data.sources import open_source
    from training.quantize import add_int8_variants

    stored = load_model(name, version)
    with open_source(images) as files, tempfile.TemporaryDirectory(prefix="manylabel-quantize-") as tmp:
        if labels_csv is not None:
            calibration, validation, y = _from_labels(stored.manifest, files, labels_csv, say)
        else:
            calibration, validation, y = _from_records(stored, files, say)
        workdir = Path(tmp)
        for entry in stored.manifest.files:
            (workdir / entry.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(stored.path / entry.path, workdir / entry.path)
        manifest = add_int8_variants(workdir, stored.manifest, calibration, validation, y, say=say, **options)
        saved = save_model(workdir, manifest)
    custom = stored.path / CUSTOM_THRESHOLDS_FILE
    if custom.is_file():
        atomic_write_bytes(saved.path / CUSTOM_THRESHOLDS_FILE, custom.read_bytes())
        say(f"carried the custom thresholds of {stored.tag} over to {saved.tag}")
    return saved


def _from_records(stored: StoredModel, files: Sequence, say: Callable[[str], None]) -> tuple:
    """(calibration paths, validation paths, validation truth) from the model's records.npz."""
    import numpy as np

    from training.data.sources import DataError

    path = stored.path / RECORDS_FILE
    if not path.is_file():
        raise DataError(
            f"{stored.tag} was stored without {RECORDS_FILE}, so its split is unknown: "
            "give --labels CSV (its images are then validated on)"
        )
    with np.load(path, allow_pickle=False) as records:
        names, split, y_true = records["names"], records["split"], records["y_true"]
    by_rel = {f.relpath: f.path for f in files}
    by_base: dict[str, list[Path]] = {}
    for f in files:
        by_base.setdefault(f.relpath.rsplit("/", 1)[-1], []).append(f.path)
    # The same relative path, else a file name only one image has.
    found = [by_rel.get(str(n)) or _only(by_base.get(str(n).rsplit("/", 1)[-1], [])) for n in names]
    calibration = [p for p, s in zip(found, split, strict=True) if p is not None and s == "train"]
    rows = [
        i for i, (p, s) in enumerate(zip(found, split, strict=True)) if p is not None and s == "validation"
    ]
    if missing := sum(p is None for p in found):
        say(f"{missing} of the {len(names)} images {stored.tag} was trained on are not in --images: left out")
    if not rows or not calibration:
        raise DataError(
            f"--images holds {len(calibration)} of {stored.tag}'s training images and {len(rows)} of its "
            "validation images; give the folder, .zip or files it was trained on"
        )
    return calibration, [found[i] for i in rows], y_true[rows].astype(np.float32)


def _only(paths: list[Path]) -> Path | None:
    return paths[0] if len(paths) == 1 else None


def _from_labels(manifest: Manifest, files: Sequence, labels_csv: Path, say: Callable[[str], None]) -> tuple:
    """(calibration paths, validation paths, validation truth): every image the CSV labels, for both."""
    import numpy as np

    from training.data.labels import load_labelled_set
    from training.data.sources import DataError

    matched = load_labelled_set(files, labels_csv)
    for line in matched.report_lines():
        say(line)
    if absent := sorted(set(manifest.labels) - set(matched.labels)):
        raise DataError(f"{labels_csv} has no column or value for the model's label(s) {', '.join(absent)}")
    column = {label: j for j, label in enumerate(manifest.labels)}
    y = np.zeros((len(matched.samples), len(manifest.labels)), np.float32)
    for row, sample in enumerate(matched.samples):
        for label in sample.labels & column.keys():
            y[row, column[label]] = 1.0
    paths = [sample.image.path for sample in matched.samples]
    return paths, paths, y


def register(sub: argparse._SubParsersAction) -> None:
    """Add `train`, `demo` and `quantize` to the `manylabel` parser (service/cli.py)."""
    p = sub.add_parser("train", help="train best/last models from images + labels CSV")
    p.add_argument("--images", required=True, nargs="+", help="a folder, a .zip, or image files")
    p.add_argument("--labels", required=True, type=Path, help="labels CSV (file name, then labels)")
    add_config_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("demo", help="train on the bundled sample and predict")
    add_config_args(p)
    p.set_defaults(func=cmd_demo, minutes=1.0)
    _register_quantize(sub)


def _register_quantize(sub: argparse._SubParsersAction) -> None:
    from training.quantize import CALIBRATION_IMAGES, MAP_TOLERANCE  # no torch, no onnxruntime

    p = sub.add_parser(
        "quantize",
        help="add calibrated int8 variants to a stored model (saved as a new version)",
        description=(
            "Make int8 copies of a stored model's best and last graphs, calibrated on its training images "
            "and checked against fp32 on its validation images; a copy that loses more than --tolerance "
            "validation mAP is dropped. The split and labels come from the model's records.npz; --images "
            "gives the image files (the folder, .zip or files it was trained on)."
        ),
    )
    p.add_argument("name", help="model name in the BentoML store (NAME or NAME:VERSION)")
    p.add_argument("--version", default=None, help="store version (default: latest)")
    p.add_argument(
        "--images", required=True, nargs="+", help="the folder, .zip or image files it was trained on"
    )
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="labels CSV to validate on instead of records.npz (its images also calibrate); "
        "needed for a model stored without records.npz",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        default=CALIBRATION_IMAGES,
        help="training images to calibrate on (default %(default)s)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=MAP_TOLERANCE,
        help="validation mAP int8 may lose against fp32 and be kept (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    p.set_defaults(func=cmd_quantize)
