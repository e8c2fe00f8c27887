"""`manylabel`: the one command line (also `python -m service`).

Each application registers its own subcommands: the server (`predict`, `serve`), the inspection
tools (`stats`, `predictions`, `thresholds`, `report`), the batch client (`batch`) and, when the
`train` extra is installed, training (`train`, `demo`) and the studio (`studio`, whose jobs run
`train`). The root imports only the application of the command being run, and heavy imports (torch,
bentoml, onnxruntime) happen inside the subcommands, so `manylabel --help` is instant, a retrain does
not load the batch client, and a serving-only install has every command but training's and the
studio's, which then say how to get them.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

from service.errors import ManylabelError

TRAIN_HINT = "training needs the train extra: pip install 'manylabel[train]'"
# Every subcommand, by the module whose `register(sub)` adds it, with its one-line help. The root
# imports only the module of the command being run (the others are listed by name and help), so
# `manylabel train` loads no batch client, inspection tools or server CLI. tests/unit/test_cli.py
# checks this table against what the modules register.
TRAINING = {
    "training.cli": {
        "train": "train best/last models from images + labels CSV",
        "demo": "train on the bundled sample and predict",
        "quantize": "add calibrated int8 variants to a stored model (saved as a new version)",
    },
    "service.studio.cli": {  # the studio's jobs run `manylabel train`
        "studio": "serve every stored model, datasets and training jobs on this machine "
        "(train from the page)",
    },
}
SERVING = {
    "service.server.cli": {
        "predict": "score images in-process, no server (same code and scores as the service)",
        "serve": "start the HTTP service (bentoml serve)",
    },
    "service.inspect.cli": {
        "stats": "statistics of a stored model at its thresholds",
        "predictions": "per-image predictions on train or validation",
        "report": "write a self-contained HTML report of a stored model",
        "thresholds": "show, set or reset a model's custom thresholds (persisted beside its manifest)",
    },
    "service.batch.cli": {"batch": "score a large folder through a running service, resumably"},
}
TRAINING_COMMANDS = {name: text for commands in TRAINING.values() for name, text in commands.items()}


def _training_missing(_: argparse.Namespace) -> int:
    print(f"manylabel: error: {TRAIN_HINT}", file=sys.stderr)
    return 2


def _training_installed() -> bool:
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("training") is not None


def _register_training_missing(sub: argparse._SubParsersAction) -> None:
    for name, help_text in TRAINING_COMMANDS.items():
        p = sub.add_parser(name, help=f"{help_text} (not installed: {TRAIN_HINT})", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_training_missing)


def _command(argv: list[str]) -> str | None:
    """The subcommand `argv` runs: its first word that is not an option (the root's take no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `manylabel` parser. With `argv`, only the module of the command it runs is imported (the
    other commands are listed, for `--help` and "invalid choice"); without, every command is whole."""
    parser = argparse.ArgumentParser(prog="manylabel", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = None if argv is None else _command(argv)
    applications = dict(SERVING)
    if _training_installed():
        applications = {**TRAINING, **applications}
    else:
        _register_training_missing(sub)
    for module, commands in applications.items():
        if argv is None or command in commands:
            importlib.import_module(module).register(sub)
        else:
            for name, help_text in commands.items():
                sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
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
