"""Statistics tables for the terminal, drawn with rich and handed over as text.

The CLIs print through a ``say`` callable (a test captures it, training logs it), so tables are
rendered to plain text: no colour codes, no markup (a label such as ``[red]`` prints as written), and
as wide as their content, never squeezed to the terminal.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table

from service.manifest import WHICH_MODELS, Manifest, SplitMetrics

GLOBAL = (
    ("accuracy", "exact-match accuracy"),
    ("label_accuracy", "label accuracy"),
    ("micro_precision", "micro precision"),
    ("micro_recall", "micro recall"),
    ("micro_f1", "micro F1"),
    ("map", "mAP"),
    ("loss", "BCE loss"),
)
SPLIT_COLUMNS = ("train", "validation")
WIDE = 1 << 12  # the console's width: a table takes the width of its content


def to_text(*renderables: RenderableType | str) -> str:
    """Tables (and lines) as plain text, one after the other."""
    console = Console(
        file=io.StringIO(), width=WIDE, color_system=None, markup=False, highlight=False, emoji=False
    )
    for renderable in renderables:
        console.print(renderable)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())


def table(first: str, *numeric: str, title: str | None = None) -> Table:
    """A table whose first column is text (left) and the others numbers (right-aligned)."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    t.add_column(first)
    for header in numeric:
        t.add_column(header, justify="right", no_wrap=True)
    return t


def number(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def global_table(manifest: Manifest) -> Table:
    """The overall metrics of best and last on train and validation, and their epochs."""
    cols = [(w, s) for w in WHICH_MODELS for s in SPLIT_COLUMNS]
    t = table("", *(f"{w}/{s}" for w, s in cols))
    for key, title in GLOBAL:
        t.add_row(title, *(number(getattr(manifest.models[w].metrics[s], key)) for w, s in cols))
    t.add_row("epoch", *(str(manifest.models[w].epoch) for w, _ in cols))
    return t


def metric_cells(m: object, threshold: float) -> list[str]:
    """support, threshold, precision, recall, F1, AP of one label (a `LabelMetrics` or its dict)."""
    get = m.get if isinstance(m, dict) else lambda key: getattr(m, key)
    scores = [number(get(key)) for key in ("precision", "recall", "f1", "ap")]
    return [str(get("support")), number(threshold), *scores]


PER_LABEL = ("support", "thresh", "prec", "recall", "F1", "AP")


def per_label_table(
    metrics: SplitMetrics, thresholds: dict[str, float], *, title: str | None = None
) -> Table:
    t = table("label", *PER_LABEL, title=title)
    for label, m in metrics.per_label.items():
        t.add_row(label, *metric_cells(m, thresholds[label]))
    return t


def print_summary(result, *, say: Callable[[str], None] = print) -> None:
    """What `manylabel train` prints when it has stored a model."""
    m: Manifest = result.manifest
    say("")
    say(f"saved {result.stored.tag} to the BentoML model store ({result.stored.path})")
    say(
        f"time: features {result.feature_seconds:.1f} s, head {result.head_seconds:.1f} s, "
        f"total {result.total_seconds:.1f} s; {result.stopped}"
    )
    say(to_text(global_table(m)))
    for which in WHICH_MODELS:
        entry = m.models[which]
        title = f"{which} model (epoch {entry.epoch}), validation, thresholds from {entry.threshold_source}:"
        labels = per_label_table(entry.metrics["validation"], m.thresholds(which), title=title)
        notes = [f"  note: {label}: {why}" for label, why in entry.threshold_fallbacks.items()]
        say(to_text("", labels, *notes))
