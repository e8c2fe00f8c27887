"""`manylabel stats | predictions | report | thresholds`: thin CLIs over `service.inspect.inspector`.

Every answer comes from the scores stored with the model (records.npz): nothing is re-inferred, and
no torch is imported. NAME is `name` (latest version) or `name:version`. Tables are rich's
(`service.tables`); ``--json`` prints the answer the HTTP route gives.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from service import custom_thresholds
from service.errors import ThresholdError
from service.inspect.inspector import Inspector
from service.inspect.records import FILTERS, SORTS, SPLITS
from service.manifest import WHICH_MODELS
from service.tables import GLOBAL, PER_LABEL, metric_cells, number, table, to_text
from service.thresholds import PROFILES

Say = Callable[[str], None]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `stats`, `predictions`, `report` and `thresholds` subcommands."""
    p = subparsers.add_parser("stats", help="statistics of a stored model at its thresholds")
    _model_args(p, splits_default=None)
    p.set_defaults(func=cmd_stats)

    p = subparsers.add_parser("predictions", help="per-image predictions on train or validation")
    _model_args(p, splits_default="validation")
    p.add_argument("--filter", choices=FILTERS, default="all", help="which images (default %(default)s)")
    p.add_argument("--label", help="narrow the filter and the score sort to this label")
    p.add_argument("--sort", choices=SORTS, default="row", help="order (default %(default)s)")
    p.add_argument("--order", choices=("asc", "desc"), help="default: asc for row/name, desc for score/wrong")
    p.add_argument("--page", type=int, default=1)
    p.add_argument("--page-size", type=int, default=50)
    p.add_argument("--advanced", action="store_true", help="every label's score, not only the predicted ones")
    p.set_defaults(func=cmd_predictions)

    p = subparsers.add_parser("report", help="write a self-contained HTML report of a stored model")
    p.add_argument("name", metavar="NAME", help="model name or name:version")
    p.add_argument("--output", required=True, type=Path, help="folder to write the report into")
    p.add_argument(
        "--profile", choices=PROFILES, help="thresholds (default: custom once set, else optimized)"
    )
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser(
        "thresholds",
        help="show, set or reset a model's custom thresholds (persisted beside its manifest)",
        description="Custom thresholds are stored in custom_thresholds.json in the model's store folder and "
        "used by the service by default; --reset goes back to the optimised (max-F1) thresholds.",
    )
    p.add_argument("name", metavar="NAME", help="model name or name:version")
    p.add_argument(
        "--which", choices=(*WHICH_MODELS, "both"), help="model to change (default: best; both for --reset)"
    )
    action = p.add_mutually_exclusive_group()
    action.add_argument("--set", nargs="+", metavar="LABEL=VALUE", help="set these labels' thresholds")
    action.add_argument("--all", type=float, metavar="VALUE", help="one threshold for every label")
    action.add_argument(
        "--reset", nargs="*", metavar="LABEL", help="back to optimised (all labels, or these)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_thresholds)


def _model_args(p: argparse.ArgumentParser, *, splits_default: str | None) -> None:
    p.add_argument("name", metavar="NAME", help="model name or name:version")
    p.add_argument("--which", choices=WHICH_MODELS, default="best", help="best or last model (default best)")
    p.add_argument(
        "--split", choices=SPLITS, default=splits_default, help=f"default {splits_default or 'both'}"
    )
    p.add_argument(
        "--profile", choices=PROFILES, help="thresholds (default: custom once set, else optimized)"
    )
    p.add_argument("--threshold", type=float, help="try one threshold for every label (not saved)")
    p.add_argument("--try", dest="overrides", nargs="+", metavar="LABEL=VALUE", help="try these (not saved)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def parse_assignments(items: list[str] | None) -> dict[str, float]:
    """["cat=0.4", ...] -> {"cat": 0.4}; ThresholdError naming the bad item."""
    out = {}
    for item in items or []:
        label, sep, value = item.rpartition("=")
        try:
            out[label] = float(value)
        except ValueError:
            sep = ""
        if not sep or not label:
            raise ThresholdError(f"{item!r} is not LABEL=VALUE with a number VALUE, e.g. cat=0.4")
    return out


def _inspector(name: str) -> Inspector:
    from service.store import load_model

    return Inspector.from_stored(load_model(name))


def _thresholds_kw(args: argparse.Namespace) -> dict:
    return {
        "profile": args.profile,
        "threshold": args.threshold,
        "thresholds": parse_assignments(args.overrides) or None,
    }


# --- stats ------------------------------------------------------------------------------------------


def stats_text(answer: dict) -> str:
    splits = answer["splits"]
    overall = table("", *splits)
    for key, title in GLOBAL:
        overall.add_row(title, *(number(m[key]) for m in splits.values()))
    tables = [overall]
    for split, m in splits.items():
        t = table("label", *PER_LABEL, "TP", "FP", "FN", "TN", title=f"{split}, per label:")
        for label, lm in m["per_label"].items():
            counts = [str(m["confusion"][label][k]) for k in ("tp", "fp", "fn", "tn")]
            t.add_row(label, *metric_cells(lm, answer["thresholds"][label]), *counts)
        tables += ["", t]
    return to_text(*tables)


def _heading(answer: dict) -> str:
    extra = f", overridden here: {', '.join(answer['overridden'])}" if answer["overridden"] else ""
    return f"{answer['model']}, {answer['which']} model, {answer['profile']} thresholds{extra}"


def cmd_stats(args: argparse.Namespace, say: Say = print) -> int:
    answer = _inspector(args.name).stats(args.which, args.split, **_thresholds_kw(args))
    say(json.dumps(answer, indent=2) if args.json else f"{_heading(answer)}\n{stats_text(answer)}")
    return 0


# --- predictions ------------------------------------------------------------------------------------


def predictions_text(answer: dict, *, advanced: bool) -> str:
    narrowed = f" on {answer['label']}" if answer["label"] else ""
    heading = (
        f"{answer['split']}, filter {answer['filter']}{narrowed}, sort {answer['sort']} {answer['order']}: "
        f"{answer['total']} images, page {answer['page']} of {max(answer['pages'], 1)}"
    )
    labels = list(answer["thresholds"])
    t = table("row", "name", "ok", *(labels if advanced else ["true -> predicted"]))
    t.columns[0].justify, t.columns[1].justify, t.columns[2].justify = "right", "left", "left"
    for item in answer["items"]:
        row = [str(item["row"]), item["name"], "yes" if item["correct"] else "NO"]
        if advanced:  # score, * when above the threshold, ! when that label is wrong
            row += [
                f"{v['score']:.3f}{'*' if v['above'] else ' '}{' ' if v['correct'] else '!'}"
                for v in item["labels"].values()
            ]
        else:
            predicted = ", ".join(f"{lab} {s:.2f}" for lab, s in item["scores"].items()) or "-"
            row.append(f"{', '.join(item['true']) or '-'} -> {predicted}")
        t.add_row(*row)
    if not advanced:
        t.columns[-1].justify = "left"
    return to_text(heading, t)


def cmd_predictions(args: argparse.Namespace, say: Say = print) -> int:
    answer = _inspector(args.name).predictions(
        args.which,
        args.split,
        filter=args.filter,
        label=args.label,
        sort=args.sort,
        order=args.order,
        page=args.page,
        page_size=args.page_size,
        view="advanced" if args.advanced or args.json else "basic",
        **_thresholds_kw(args),
    )
    say(
        json.dumps(answer, indent=2)
        if args.json
        else f"{_heading(answer)}\n{predictions_text(answer, advanced=args.advanced)}"
    )
    return 0


# --- report and thresholds --------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace, say: Say = print) -> int:
    from service.inspect.report import write_report
    from service.store import load_model

    path = write_report(load_model(args.name), args.output, profile=args.profile)
    say(f"wrote {path}")
    return 0


def thresholds_text(state: dict, manifest) -> str:
    heading = f"{state['model']} thresholds (custom ones are used by the service and the inspect views):"
    t = table("label", *(f"{w} {kind}" for w in WHICH_MODELS for kind in ("opt", "used")))
    for label in manifest.labels:
        cells = []
        for w in WHICH_MODELS:
            mark = "*" if label in state["custom"][w] else " "
            cells += [number(manifest.thresholds(w)[label]), number(state["thresholds"][w][label]) + mark]
        t.add_row(label, *cells)
    footnote = "* custom value; `manylabel thresholds NAME --reset` goes back to the optimised ones"
    return to_text(heading, t, footnote)


def cmd_thresholds(args: argparse.Namespace, say: Say = print) -> int:
    from service.store import load_model

    stored = load_model(args.name)
    file = custom_thresholds.ThresholdFile(stored.path, stored.manifest)
    if args.set is not None:
        file.set_values(parse_assignments(args.set), which=args.which or "best")
    elif args.all is not None:
        file.set_all(args.all, which=args.which or "best")
    elif args.reset is not None:
        file.reset(which=args.which or "both", labels=args.reset or None)
    state = {"model": stored.tag, **file.describe()}
    say(json.dumps(state, indent=2) if args.json else thresholds_text(state, stored.manifest))
    return 0
