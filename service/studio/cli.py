"""`manylabel studio`: the studio service on this machine, `bentoml serve service.studio.service:ManyLabel`.

Registered by the `manylabel` root (service/cli.py) only where the train extra is installed: the
server itself never imports torch, but its jobs run `manylabel train`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from service.server.cli import exec_serve
from service.studio.settings import DATA_ENV, StudioSettings

SERVICE_IMPORT = "service.studio.service:ManyLabel"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `studio` subcommand."""
    p = subparsers.add_parser(
        "studio",
        help="serve every stored model, datasets and training jobs on this machine (train from the page)",
        description=(
            "Upload datasets, train on them and watch the jobs from the web page (/ui); every model in "
            "the store is served as by `manylabel serve`. MANYLABEL_* variables tune serving."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument(
        "--data", type=Path, default=None, help=f"datasets and jobs (${DATA_ENV}; ~/.local/share/manylabel)"
    )
    p.set_defaults(func=run_studio)


def run_studio(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.data is not None:
        env[DATA_ENV] = str(args.data)
    data = StudioSettings.from_env(env).data
    data.mkdir(parents=True, exist_ok=True)
    env[DATA_ENV] = str(data)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"manylabel studio: data in {data}; open http://{shown}:{args.port}/ui", file=sys.stderr)
    if args.host not in LOOPBACK and not env.get("MANYLABEL_API_TOKEN"):
        print(
            "manylabel studio: without MANYLABEL_API_TOKEN only this machine may upload or train",
            file=sys.stderr,
        )
    return exec_serve(SERVICE_IMPORT, args.host, args.port, env)
