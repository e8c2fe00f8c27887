"""`manylabel stats | predictions | report | thresholds`: thin CLIs over `service.inspect`.

Every answer comes from the scores stored with the model (records.npz): nothing is re-inferred, and
no torch is imported. NAME is `name` (latest version) or `name:version`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from service import custom_thresholds
from service.errors import ThresholdError
from service.inspect import FILTERS, PROFILES, SORTS, SPLITS
from service.inspector import Inspector
from service.manifest import WHICH_MODELS
from training.report import GLOBAL

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


def _f(value: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def stats_text(answer: dict) -> str:
    splits = answer["splits"]
    lines = [f"{'':22}" + "".join(f"{s:>14}" for s in splits)]
    for key, title in GLOBAL:
        lines.append(f"{title:22}" + "".join(_f(m[key], 14) for m in splits.values()))
    for split, m in splits.items():
        lines += ["", f"{split}, per label:"]
        head = ("support", "thresh", "prec", "recall", "F1", "AP", "TP", "FP", "FN", "TN")
        lines.append(f"{'label':18}" + "".join(f"{h:>8}" for h in head))
        for label, lm in m["per_label"].items():
            c = m["confusion"][label]
            cells = [f"{lm['support']:>8}", _f(answer["thresholds"][label]), _f(lm["precision"])]
            cells += [_f(lm["recall"]), _f(lm["f1"]), _f(lm["ap"])]
            cells += [f"{c[k]:>8}" for k in ("tp", "fp", "fn", "tn")]
            lines.append(f"{label[:18]:18}" + "".join(cells))
    return "\n".join(lines)


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
    lines = [
        f"{answer['split']}, filter {answer['filter']}{narrowed}, sort {answer['sort']} {answer['order']}: "
        f"{answer['total']} images, page {answer['page']} of {max(answer['pages'], 1)}"
    ]
    width = max([len(i["name"]) for i in answer["items"]] + [4])
    labels = list(answer["thresholds"])
    head = f"{'row':>6}  {'name':{width}}  ok  "
    lines.append(head + ("".join(f"{lab[:9]:>10}" for lab in labels) if advanced else "true -> predicted"))
    for item in answer["items"]:
        row = f"{item['row']:>6}  {item['name']:{width}}  {'yes' if item['correct'] else 'NO ':3} "
        if advanced:  # score, * when above the threshold, ! when that label is wrong
            cells = [
                f"{v['score']:.3f}{'*' if v['above'] else ' '}{' ' if v['correct'] else '!'}"
                for v in item["labels"].values()
            ]
            lines.append(row + "".join(f"{c:>10}" for c in cells))
        else:
            predicted = ", ".join(f"{lab} {s:.2f}" for lab, s in item["scores"].items()) or "-"
            lines.append(row + f"{', '.join(item['true']) or '-'} -> {predicted}")
    return "\n".join(lines)


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
    from service.store import load_model
    from training.report_html import write_report

    path = write_report(load_model(args.name), args.output, profile=args.profile)
    say(f"wrote {path}")
    return 0


def thresholds_text(state: dict, manifest) -> str:
    lines = [f"{state['model']} thresholds (custom ones are used by the service and the inspect views):"]
    lines.append(f"{'label':18}" + "".join(f"{w + ' opt':>12}{w + ' used':>12}" for w in WHICH_MODELS))
    for label in manifest.labels:
        cells = []
        for w in WHICH_MODELS:
            mark = "*" if label in state["custom"][w] else " "
            cells += [
                f"{manifest.thresholds(w)[label]:>12.3f}",
                f"{state['thresholds'][w][label]:>11.3f}{mark}",
            ]
        lines.append(f"{label[:18]:18}" + "".join(cells))
    lines.append("* custom value; `manylabel thresholds NAME --reset` goes back to the optimised ones")
    return "\n".join(lines)


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
