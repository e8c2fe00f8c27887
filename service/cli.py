"""`manylabel`: the one command line (also `python -m service`).

Each application registers its own subcommands: the server (`predict`, `serve`), the inspection
tools (`stats`, `predictions`, `thresholds`, `report`), the batch client (`batch`) and, when the
`train` extra is installed, training (`train`, `demo`) and the studio (`studio`, whose jobs run
`train`). Heavy imports (torch, bentoml, onnxruntime) happen inside the subcommands, so `manylabel
--help` is instant and a serving-only install has every command but training's and the studio's,
which then say how to get them.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

from service.errors import ManylabelError

TRAIN_HINT = "training needs the train extra: pip install 'manylabel[train]'"
TRAINING_COMMANDS = {
    "train": "train best/last models from images + labels CSV",
    "demo": "train on the bundled sample and predict",
    "studio": "serve every stored model, datasets and training jobs on this machine (train from the page)",
    "quantize": "add calibrated int8 variants to a stored model (a new version)",
}


def _training_missing(_: argparse.Namespace) -> int:
    print(f"manylabel: error: {TRAIN_HINT}", file=sys.stderr)
    return 2


def _register_training(sub: argparse._SubParsersAction) -> None:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("training") is None:
        for name, help_text in TRAINING_COMMANDS.items():
            p = sub.add_parser(name, help=f"{help_text} (not installed: {TRAIN_HINT})", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=_training_missing)
        return
    from service.studio import cli as studio_cli  # the studio's jobs run `manylabel train`
    from training import cli as training_cli  # imports no torch until a command runs

    training_cli.register(sub)
    studio_cli.register(sub)


def build_parser() -> argparse.ArgumentParser:
    from service.batch import cli as batch_cli
    from service.inspect import cli as inspect_cli
    from service.server import cli as server_cli

    parser = argparse.ArgumentParser(prog="manylabel", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_training(sub)
    server_cli.register(sub)
    inspect_cli.register(sub)
    batch_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.func is not _training_missing:  # the stubs take any flags, to give the hint
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return args.func(args)
    except ManylabelError as exc:
        print(f"manylabel: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-done was saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
